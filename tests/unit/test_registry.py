"""The registry gate's rule, on synthetic predictions: McNemar's exact test and the promotion decision."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import binomtest

from pipeline.config import RegistryConfig, compose, validate
from pipeline.tracking.gate import Decision, GateReport, decide, mcnemar


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
