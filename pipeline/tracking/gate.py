"""The registry gate's rule, pure: does a challenger beat the champion on the same test images?

Consumes: two models' per-image correctness on one test set and the ``registry`` config. Produces a
:class:`Verdict` (promote or not, why, McNemar's counts and p-value); :mod:`pipeline.tracking.registry` turns
it into a :class:`Decision` (a version registered only for a promoted model), and the evaluate stage into a
:class:`GateReport` (``paths.registry``).

"Beats" is decided by McNemar's exact test, the test for two classifiers scored on one test set: of the images
where exactly one model is right, ``b`` favour the champion and ``c`` the challenger; if both are equally
accurate, ``c`` is Binomial(b + c, 1/2), and the two-sided binomial test gives the p-value
(:func:`scipy.stats.binomtest`). The challenger is promoted when its accuracy is higher and p < ``registry.alpha``
(or on higher accuracy alone with ``registry.require_significance: false``); the first model becomes champion.
A deterministic rerun (identical predictions: b = c = 0, p = 1) never displaces the champion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.config import RegistryConfig


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    b: int = 0  # images the champion got right and the challenger wrong
    c: int = 0  # images the challenger got right and the champion wrong
    p_value: float | None = None  # None: no champion to compare with


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    model: str  # registered model name
    version: str | None  # the evaluated model's registered version; None: not registered (never promoted)
    accuracy: float
    champion_version: str | None = None  # the holder before this decision
    champion_accuracy: float | None = None
    b: int = 0  # images the champion got right and the challenger wrong
    c: int = 0  # images the challenger got right and the champion wrong
    p_value: float | None = None
    alpha: float = 0.05
    require_significance: bool = True
    model_id: str | None = None  # the LoggedModel evaluated
    run_id: str | None = None  # the evaluation's run, which holds this decision (registry/decision.json)
    test_digest: str | None = None  # the test set both models were compared on (test_digest)
    settled: str = ""  # how a conflict with gates promoting at the same moment was settled; "" when none

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        shown = (
            f"{self.model} v{self.version} ({self.accuracy:.4f})"
            if self.version is not None
            else f"{self.model} model {self.model_id} ({self.accuracy:.4f}, not registered)"
        )
        if self.champion_version is None:
            text = f"{shown} is the first champion" if self.promoted else f"{shown}: no champion before; {self.reason}"
        else:
            verb = "promoted over" if self.promoted else "did not replace"
            text = (
                f"{shown} {verb} champion v{self.champion_version} "
                f"({self.champion_accuracy:.4f}): b={self.b} c={self.c} McNemar p={self.p_value:.3g}; {self.reason}"
            )
        return text + (f"; {self.settled}" if self.settled else "")


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> tuple[int, int, float]:
    """(b, c, two-sided exact p-value) for two models' per-image correctness on the same images."""
    from scipy.stats import binomtest

    champion_correct, challenger_correct = np.asarray(champion_correct, bool), np.asarray(challenger_correct, bool)
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError(
            f"the two models were scored on different test sets: {champion_correct.shape} vs {challenger_correct.shape}"
        )
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(challenger_correct & ~champion_correct))
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return b, c, p


def decide(challenger_correct: np.ndarray, champion_correct: np.ndarray | None, cfg: RegistryConfig) -> Verdict:
    """The gate's rule: promote the challenger over the champion (None: there is none yet)?"""
    if champion_correct is None:
        return Verdict(True, "no champion yet")
    b, c, p = mcnemar(champion_correct, challenger_correct)
    if c <= b:
        return Verdict(False, "not more accurate", b, c, p)
    if cfg.require_significance and p >= cfg.alpha:
        return Verdict(False, f"more accurate, but not significantly (p >= {cfg.alpha})", b, c, p)
    why = "more accurate" + (f", significantly (p < {cfg.alpha})" if cfg.require_significance else "")
    return Verdict(True, why, b, c, p)


@dataclass(frozen=True)
class Turn:
    """One candidate's turn in :func:`replay`: the holder it met and the rule's verdict."""

    version: str
    holder: str | None
    verdict: Verdict


def replay(
    base: str | None, candidates: Sequence[str], correct: Callable[[str], np.ndarray], cfg: RegistryConfig
) -> tuple[str | None, list[Turn]]:
    """Where one-at-a-time gating would leave the alias: from ``base`` (the holder, None: none yet), each of
    ``candidates`` in order meets the holder of its turn under :func:`decide`. ``correct(version)`` is a
    version's per-image correctness on the shared test set. Deterministic: every gate that replays the same
    candidates from the same base reaches the same holder."""
    holder, turns = base, []
    for version in candidates:
        verdict = decide(correct(version), None if holder is None else correct(holder), cfg)
        turns.append(Turn(version, holder, verdict))
        if verdict.promote:
            holder = version
    return holder, turns


def settled(own: str, winner: str | None, turns: list[Turn]) -> str:
    """The conflict's outcome for ``own``, in words ("" when no other candidate took part)."""
    others = [t.version for t in turns if t.version != own]
    if not others:
        return ""
    head = f"settled with {', '.join(f'v{v}' for v in others)} (promoted at the same time), replayed in version order"
    if winner == own:
        return f"{head}: v{own} keeps the alias"
    mine = next(t for t in turns if t.version == own)
    if not mine.verdict.promote:
        return (
            f"{head}: v{own} does not beat v{mine.holder} (b={mine.verdict.b} c={mine.verdict.c} "
            f"p={mine.verdict.p_value:.3g}); v{winner} holds the alias"
        )
    return f"{head}: v{winner}, replayed after v{own}, holds the alias"


def test_digest(x: np.ndarray, y: np.ndarray) -> str:
    """Names a test set by content: two models are comparable image by image only on the same one."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()


@dataclass(frozen=True)
class GateReport:
    """What ``paths.registry`` holds: whether the model is a registered version (promoted now, or the champion
    already), and the gate's decision when it was gated (its numbers and reason whether registered or not)."""

    registered: bool
    reason: str = ""  # why it was not gated (registry.enabled false, no logged model)
    decision: Decision | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.decision is None:
            return {"registered": self.registered, "reason": self.reason}
        return {"registered": self.registered, **self.decision.as_dict()}
