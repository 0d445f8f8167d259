"""The registry gate's rule, on synthetic predictions: McNemar's exact test and the promotion decision."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import binomtest

from pipeline.config import RegistryConfig, compose, validate
from pipeline.tracking.gate import Decision, GateReport, decide, mcnemar, replay, settled


def registry(**changes) -> RegistryConfig:
    return dataclasses.replace(validate(compose()).registry, **changes)


def correctness(
    n_right_both: int, only_champion: int, only_challenger: int, neither: int
) -> tuple[np.ndarray, np.ndarray]:
    champion = [True] * n_right_both + [True] * only_champion + [False] * only_challenger + [False] * neither
    challenger = [True] * n_right_both + [False] * only_champion + [True] * only_challenger + [False] * neither
    return np.array(champion), np.array(challenger)


def test_mcnemar_counts_the_discordant_images_and_tests_them_exactly():
    champion, challenger = correctness(900, 10, 30, 60)
    b, c, p = mcnemar(champion, challenger)
    assert (b, c) == (10, 30)
    assert p == pytest.approx(binomtest(30, 40, 0.5).pvalue) and p < 0.01
    assert mcnemar(champion, champion) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="different test sets"):
        mcnemar(champion, challenger[:-1])


@pytest.mark.parametrize(
    ("counts", "cfg", "promote", "reason"),
    [
        ((900, 10, 30, 60), registry(), True, "more accurate, significantly (p < 0.05)"),  # better
        ((900, 30, 10, 60), registry(), False, "not more accurate"),  # worse
        ((900, 20, 20, 60), registry(), False, "not more accurate"),  # equal
        ((900, 0, 0, 100), registry(), False, "not more accurate"),  # a deterministic rerun
        ((900, 20, 25, 55), registry(), False, "more accurate, but not significantly (p >= 0.05)"),
        ((900, 20, 25, 55), registry(require_significance=False), True, "more accurate"),
    ],
)
def test_the_gate_promotes_only_a_real_improvement(counts, cfg, promote, reason):
    champion, challenger = correctness(*counts)
    decided = decide(challenger, champion, cfg)
    assert (decided.promote, decided.reason) == (promote, reason)


def test_the_first_model_becomes_champion():
    decided = decide(np.array([True, False]), None, registry())
    assert (decided.promote, decided.reason, decided.p_value) == (True, "no champion yet", None)


def test_a_model_not_promoted_is_reported_unregistered_with_the_decisions_numbers():
    """reports/registry.json for a candidate that did not beat the champion: registered false, no version, and
    every number of the decision (its run's registry/decision.json holds the same)."""
    decision = Decision(
        promoted=False, reason="not more accurate", model="mnist-cnn", version=None, accuracy=0.98,
        champion_version="3", champion_accuracy=0.99, b=12, c=2, p_value=0.013, model_id="m-abc", run_id="r1",
    )  # fmt: skip
    report = GateReport(registered=decision.version is not None, decision=decision).as_dict()
    assert report["registered"] is False and report["version"] is None and report["reason"] == "not more accurate"
    assert (report["b"], report["c"], report["p_value"], report["champion_version"]) == (12, 2, 0.013, "3")
    assert {k: v for k, v in report.items() if k != "registered"} == decision.as_dict()
    assert "mnist-cnn model m-abc (0.9800, not registered) did not replace champion v3" in decision.summary()


def correct_at(accuracy: float, seed: int, n: int = 1000) -> np.ndarray:
    """A model's per-image correctness on ``n`` shared test images: wrong on a random ``1 - accuracy`` of them."""
    return np.random.default_rng(seed).permutation(n) >= round((1 - accuracy) * n)


def test_replay_puts_the_alias_on_the_clearly_better_of_two_models_promoted_at_once_in_either_order():
    """Two gates that both beat champion v1 and registered v2 and v3: the replay, the settle's rule, is the
    one-at-a-time gate in version order, so the clearly better model ends with the alias whichever came first."""
    models = {"1": correct_at(0.90, 1), "clear": correct_at(0.98, 2), "slight": correct_at(0.93, 3)}
    for first, second in (("clear", "slight"), ("slight", "clear")):
        winner, turns = replay("1", [first, second], models.__getitem__, registry())
        assert winner == "clear"
        assert [(t.version, t.holder, t.verdict.promote) for t in turns] == [
            (first, "1", True), (second, first, second == "clear")
        ]  # fmt: skip
    assert settled("slight", "clear", replay("1", ["clear", "slight"], models.__getitem__, registry())[1]).startswith(
        "settled with vclear (promoted at the same time), replayed in version order: vslight does not beat vclear (b="
    )
    winner, turns = replay(None, ["slight", "clear"], models.__getitem__, registry())  # two first models at once
    assert winner == "clear" and turns[0].verdict.reason == "no champion yet"


def test_settled_says_nothing_without_a_conflict_and_names_the_holder_with_one():
    models = {"1": correct_at(0.90, 1), "2": correct_at(0.93, 3), "3": correct_at(0.98, 2)}
    _, alone = replay("1", ["2"], models.__getitem__, registry())
    assert settled("2", "2", alone) == ""
    winner, turns = replay("1", ["2", "3"], models.__getitem__, registry())
    head = "(promoted at the same time), replayed in version order"
    assert settled("3", winner, turns) == f"settled with v2 {head}: v3 keeps the alias"
    assert settled("2", winner, turns) == f"settled with v3 {head}: v3, replayed after v2, holds the alias"
