"""The registry gate against a real MLflow store: versions, the champion alias, tags, and concurrent evaluations.

The models are LoggedModels without weights (the gate reads only their evaluation's predictions), so the tests
need no training; the same code runs in the evaluate stage (tests/integration/test_dvc.py).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.config import RegistryConfig, TrackingConfig, compose, validate
from pipeline.tracking import registry
from tests.conftest import ROOT, new_store

LABELS = np.arange(1000) % 10


def registry_config(name: str) -> RegistryConfig:
    """conf/'s registry section (every default is there), for the registered model ``name``."""
    return dataclasses.replace(validate(compose()).registry, name=name)


def tracking_config(uri: str) -> TrackingConfig:
    """conf/'s tracking section, for the store ``uri``."""
    return dataclasses.replace(validate(compose()).tracking, uri=uri)


def predictions(accuracy: float, seed: int) -> np.ndarray:
    wrong = np.random.default_rng(seed).permutation(1000) < round((1 - accuracy) * 1000)
    return np.where(wrong, (LABELS + 1) % 10, LABELS)


def evaluated_model(uri: str, accuracy: float, seed: int, train_images: int = 0) -> tuple[str, str, np.ndarray]:
    """A run with a READY LoggedModel and its evaluation's predictions: (model_id, run_id, predictions); with
    ``train_images``, the run also records a training dataset input of that many images, as the train stage does."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import LoggedModelStatus

    experiment = tracking.setup(tracking_config(uri))
    pred = predictions(accuracy, seed)
    with mlflow.start_run(experiment_id=experiment) as run:
        if train_images:
            x, y = np.zeros((train_images, 2, 2, 1), np.float32), np.zeros(train_images, np.int64)
            with warnings.catch_warnings():  # MLflow's two local-file source types, as in tracking.results
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                dataset = from_numpy(x, targets=y, source="train.npz", name="mnist-train")
            mlflow.log_input(dataset, context="training")
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        mlflow.MlflowClient().finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        registry.log_predictions(pred, LABELS)
    return model.model_id, run.info.run_id, pred


def never(model_uri: str) -> np.ndarray:
    raise AssertionError("the champion's saved predictions should be used")


def run_gate(uri: str, cfg: RegistryConfig, accuracy: float, seed: int) -> registry.Decision:
    model_id, run_id, pred = evaluated_model(uri, accuracy, seed)
    return registry.gate(cfg, model_id, run_id, pred, LABELS, "digest-1", never)


@pytest.fixture
def uri(tmp_path) -> str:
    return new_store(tmp_path / "mlflow.db")


def champion_version(uri: str, name: str) -> str:
    return str(mlflow.MlflowClient(uri).get_model_version_by_alias(name, "champion").version)


def test_first_better_worse_equal_and_rerun(uri):
    cfg = registry_config("gate-cnn")
    first = run_gate(uri, cfg, 0.90, seed=1)
    assert first.promoted and first.reason == "no champion yet" and first.version == "1"

    better = run_gate(uri, cfg, 0.96, seed=2)
    assert better.promoted and better.champion_version == "1" and better.p_value < 0.05
    assert (better.accuracy, better.champion_accuracy) == (0.96, 0.90)

    worse = run_gate(uri, cfg, 0.93, seed=3)
    close = run_gate(uri, cfg, 0.962, seed=2)  # almost the same predictions as the champion: not significant
    assert not worse.promoted and worse.reason == "not more accurate"
    assert not close.promoted and close.p_value >= 0.05
    assert champion_version(uri, "gate-cnn") == better.version == "2"

    # The registry holds the two promoted models; the others stay LoggedModels, decided but not registered.
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='gate-cnn'")
    assert sorted(v.version for v in versions) == [1, 2] and (worse.version, close.version) == (None, None)
    assert {v.source for v in versions} == {f"models:/{first.model_id}", f"models:/{better.model_id}"}
    version = client.get_model_version("gate-cnn", better.version)
    # What a later gate reads back (champion_predictions), and two to read: no more.
    assert set(version.tags) == {"registry.eval_run_id", "registry.test_digest", "registry.accuracy", "registry.reason"}
    assert version.tags["registry.eval_run_id"] == better.run_id and version.tags["registry.test_digest"] == "digest-1"
    assert version.run_id == client.get_logged_model(better.model_id).source_run_id
    assert json.loads(client.get_logged_model(better.model_id).tags["mlflow.modelVersions"]) == [
        {"name": "gate-cnn", "version": "2"}
    ]
    assert "mlflow.modelVersions" not in client.get_logged_model(worse.model_id).tags


def test_a_run_gets_three_registry_tags_and_the_whole_decision_as_an_artifact(uri):
    cfg = registry_config("gate-cnn")
    first = run_gate(uri, cfg, 0.90, seed=1)
    worse = run_gate(uri, cfg, 0.85, seed=3)
    client = mlflow.MlflowClient(uri)
    for decision, version in ((first, "1"), (worse, "none")):
        run = client.get_run(decision.run_id)
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("registry.")}
        assert tags == {
            "registry.promoted": str(decision.promoted), "registry.version": version, "registry.reason": decision.reason
        }  # fmt: skip
        path = mlflow.artifacts.download_artifacts(
            run_id=decision.run_id, artifact_path=registry.DECISION_ARTIFACT, tracking_uri=uri
        )
        saved = json.loads(Path(path).read_text())
        assert saved == json.loads(json.dumps(decision.as_dict()))
    assert (saved["version"], saved["champion_version"], saved["b"] > saved["c"]) == (None, "1", True)


def test_an_identical_model_adds_no_version_and_the_champion_stays(uri):
    """A second, identical deterministic training (another LoggedModel, the same predictions: b = c = 0) is
    judged, not registered."""
    cfg = registry_config("gate-cnn")
    first = run_gate(uri, cfg, 0.90, seed=1)
    twin = run_gate(uri, cfg, 0.90, seed=1)
    assert twin.model_id != first.model_id
    assert (twin.promoted, twin.version, twin.b, twin.c, twin.p_value) == (False, None, 0, 0, 1.0)
    assert twin.reason == "not more accurate" and twin.champion_version == "1"
    assert len(mlflow.MlflowClient(uri).search_model_versions("name='gate-cnn'")) == 1
    assert champion_version(uri, "gate-cnn") == "1"


def test_nothing_misleading_is_printed_on_a_brand_new_store(uri, capfd, caplog):
    """MlflowClient's calls, not mlflow.register_model: no "Registered model ... already exists", no
    "Successfully registered", on a new store or an existing one."""
    cfg = registry_config("gate-cnn")
    for accuracy, seed in ((0.90, 1), (0.96, 2), (0.93, 3), (0.99, 4)):
        run_gate(uri, cfg, accuracy, seed)
    printed = "".join(capfd.readouterr()) + caplog.text
    for notice in ("already exists", "Successfully registered", "Created version"):
        assert notice not in printed
    assert len(mlflow.MlflowClient(uri).search_model_versions("name='gate-cnn'")) == 3


def test_re_gating_the_same_model_reuses_its_version_and_keeps_the_champion(uri):
    cfg = registry_config("gate-cnn")
    model_id, run_id, pred = evaluated_model(uri, 0.9, seed=1)
    first = registry.gate(cfg, model_id, run_id, pred, LABELS, "d", lambda u: pred)
    again = registry.gate(cfg, model_id, run_id, pred, LABELS, "d", lambda u: pred)
    assert (first.version, again.version) == ("1", "1")
    assert again.reason == "already the champion" and not again.promoted


def test_a_champion_scored_on_another_test_set_is_predicted_again(uri):
    cfg = registry_config("gate-cnn")
    model_id, run_id, pred = evaluated_model(uri, 0.90, seed=1)
    registry.gate(cfg, model_id, run_id, pred, LABELS, "old-test-set", lambda u: pred)
    challenger = evaluated_model(uri, 0.97, seed=5)
    asked = []
    decision = registry.gate(
        cfg, *challenger, LABELS, "new-test-set", lambda u: asked.append(u) or predictions(0.90, 1)
    )
    assert asked == ["models:/gate-cnn/1"] and decision.promoted


def test_a_registered_version_carries_its_model_card_as_description_and_as_an_artifact(uri):
    from pipeline.tracking import card

    cfg = registry_config("card-cnn")
    per_class = [float(np.mean(predictions(0.96, 2)[c == LABELS] == c)) for c in range(10)]
    metrics = {"test_accuracy": 0.96, "test_loss": 0.12, "test_samples": 1000}
    facts = card.facts(validate(compose()), metrics, per_class)
    client = mlflow.MlflowClient(uri)

    def gated(accuracy: float, seed: int, train_images: int = 0) -> registry.Decision:
        model = evaluated_model(uri, accuracy, seed, train_images)
        return registry.gate(cfg, *model, LABELS, "digest-1", never, card=facts)

    def card_of(run_id: str) -> str:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=card.ARTIFACT, tracking_uri=uri)
        return Path(path).read_text()

    first, better, worse = gated(0.90, 1, train_images=600), gated(0.96, 2, train_images=600), gated(0.93, 3)
    for decision in (first, better):
        text = client.get_model_version("card-cnn", decision.version).description
        expected = dataclasses.replace(facts, train_images=600, model_uri=f"models:/card-cnn/{decision.version}")
        assert text == card_of(decision.run_id) == card.render(expected, decision)
    text = card_of(better.run_id)
    assert text.startswith("# Model card: card-cnn v2\n") and "| training images | 600 |" in text
    assert "| champion before | v1 (0.9000) |" in text
    assert f"| b: images only the champion got right | {better.b} |" in text
    assert f"| McNemar's exact p (two-sided) | {better.p_value:.3g} |" in text
    assert "| outcome | promoted: v2 holds the alias |" in text and "| test_accuracy | 0.9600 |" in text
    # A model that was not promoted: its run holds the card (why not), and the registry has no version of it.
    assert "| outcome | not promoted (not registered) |" in card_of(worse.run_id)
    assert "| training images | not recorded |" in card_of(worse.run_id)
    assert sorted(v.version for v in client.search_model_versions("name='card-cnn'")) == [1, 2]


GATE = """
import sys, json, numpy as np
sys.path.insert(0, sys.argv[4])
from tests.integration.test_registry import registry_config, run_gate
d = run_gate(sys.argv[1], registry_config("race-cnn"), float(sys.argv[2]), int(sys.argv[3]))
print(json.dumps(d.as_dict()))
"""


def test_concurrent_evaluations_end_with_the_alias_on_the_best_model(uri, tmp_path):
    tracking.setup(tracking_config(uri))  # the store exists; the gates race for the alias
    accuracies = {0.80: 11, 0.97: 12}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATE, uri, str(a), str(s), str(ROOT)], stdout=subprocess.PIPE, text=True
        )
        for a, s in accuracies.items()
    ]
    decisions = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    best, other = (next(d for d in decisions if d["accuracy"] == a) for a in (0.97, 0.80))
    assert best["promoted"] and champion_version(uri, "race-cnn") == best["version"]
    # The worse one is registered only if it came first (then the best displaced it), never lost nor doubled.
    versions = mlflow.MlflowClient(uri).search_model_versions("name='race-cnn'")
    assert sorted(str(v.version) for v in versions) == sorted(d["version"] for d in decisions if d["version"])
    assert (other["version"] is None) == (other["champion_version"] == best["version"])
    assert Path(tmp_path / "mlflow.db").is_file()
