"""The model card, rendered from synthetic facts and decisions: every section, the numbers as given."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.config import compose, validate
from pipeline.tracking.card import CardFacts, facts, render
from pipeline.tracking.gate import Decision

CLASSES = tuple(str(d) for d in range(10))


def card_facts(**changes) -> CardFacts:
    base = CardFacts(
        dataset="mnist", classes=CLASSES, data_digest="d" * 64, test_images=10_000, model="basic_cnn",
        model_params={"filters": [32, 64], "dense_units": 512}, optimizer="adam",
        optimizer_params={"learning_rate": 0.001, "amsgrad": False}, train_params={"epochs": 1, "batch_size": 32},
        seed=42, metrics={"test_loss": 0.0331, "test_accuracy": 0.9893, "test_samples": 10_000.0},
        per_class_accuracy={c: 0.98 + i / 1000 for i, c in enumerate(CLASSES)}, train_images=60_000,
        model_uri="models:/mnist-cnn/3",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def decision(**changes) -> Decision:
    base = Decision(
        promoted=True, reason="more accurate, significantly (p < 0.05)", model="mnist-cnn", version="3",
        accuracy=0.9893, champion_version="2", champion_accuracy=0.9850, b=12, c=55, p_value=1.5e-7,
        model_id="m-abc", run_id="r-123", test_digest="t" * 64,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_a_card_gives_the_data_the_set_up_the_metrics_the_decision_and_the_limits():
    text = render(card_facts(), decision())
    assert text.startswith("# Model card: mnist-cnn v3\n")
    assert "`r-123`" in text and "`m-abc`" in text and "`models:/mnist-cnn/3`" in text
    data = section(text, "Data")
    assert "| dataset | mnist (10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9) |" in data
    assert f"`{'d' * 64}`" in data and "| training images | 60,000 |" in data and "| test images | 10,000 |" in data
    setup = section(text, "Training set-up")
    assert "| model | basic_cnn (filters=[32, 64], dense_units=512) |" in setup
    assert "| optimizer | adam (learning_rate=0.001, amsgrad=false) |" in setup
    assert "| train.epochs | 1 |" in setup and "| train.batch_size | 32 |" in setup and "| seed | 42 |" in setup
    metrics = section(text, "Metrics (test split)")
    assert "| test_accuracy | 0.9893 |" in metrics and "| test_loss | 0.0331 |" in metrics
    assert "| test_samples | 10,000 |" in metrics
    assert "| class | accuracy |" in metrics and "| 0 | 0.9800 |" in metrics and "| 9 | 0.9890 |" in metrics
    gate = section(text, "Gate decision")
    for row in (
        "| outcome | promoted: v3 holds the alias |",
        "| reason | more accurate, significantly (p < 0.05) |",
        "| champion before | v2 (0.9850) |",
        "| b: images only the champion got right | 12 |",
        "| c: images only this model got right | 55 |",
        "| McNemar's exact p (two-sided) | 1.5e-07 |",
        "| rule | promoted when more accurate and p < 0.05 required |",
    ):
        assert row in gate
    assert "MNIST was made" in section(text, "Intended use")
    limits = section(text, "Known limits")
    assert "light border is taken for paper and inverted" in limits and "less than 0.1" in limits
    assert "20x20" in limits and "centre of mass in 28x28" in limits


def test_the_first_champion_a_lost_conflict_and_a_model_not_registered():
    first = section(render(card_facts(), decision(champion_version=None, b=0, c=0, p_value=None)), "Gate decision")
    assert "| champion before | none: the first model |" in first and "b: images" not in first
    lost = decision(promoted=False, settled="settled with v4 (promoted at the same time): v4 holds the alias")
    lost_gate = section(render(card_facts(), lost), "Gate decision")
    assert "| outcome | not promoted: v3 is registered, another version holds the alias |" in lost_gate
    assert "; settled with v4 (promoted at the same time): v4 holds the alias |" in lost_gate
    again = decision(promoted=False, reason="already the champion", champion_version="3", b=0, c=0, p_value=1.0)
    assert "| outcome | re-evaluated: v3 is the champion already |" in render(card_facts(), again)
    kept = render(card_facts(train_images=None), decision(promoted=False, version=None, reason="not more accurate"))
    assert kept.startswith("# Model card: mnist-cnn: model m-abc\n")
    assert "| outcome | not promoted (not registered) |" in kept and "| training images | not recorded |" in kept


def test_a_pipe_in_a_value_does_not_break_the_table():
    text = render(card_facts(classes=("a|b", "c"), per_class_accuracy={"a|b": 0.5, "c": 1.0}), decision())
    assert "| a\\|b | 0.5000 |" in text


def test_facts_come_from_the_typed_config_and_the_evaluation():
    cfg = validate(compose(["train.subset=512"]))
    got = facts(cfg, {"test_accuracy": 0.9, "test_loss": 0.3, "test_samples": 1000}, np.linspace(0.8, 0.99, 10))
    assert (got.dataset, got.classes, got.data_digest) == ("mnist", CLASSES, cfg.dataset.content_hash())
    assert got.test_images == 1000 and got.train_images is None and got.seed == cfg.seed
    assert (got.model, got.model_params) == (cfg.model.name, cfg.model.params)
    assert got.optimizer == cfg.optimizer.name and got.optimizer_params["learning_rate"] == cfg.optimizer.learning_rate
    assert "name" not in got.optimizer_params
    assert got.train_params["subset"] == 512 and got.train_params["precision"] == "float32"
    assert got.per_class_accuracy["0"] == 0.8 and got.per_class_accuracy["9"] == 0.99
    assert "| train.precision | float32 |" in render(got, decision())
