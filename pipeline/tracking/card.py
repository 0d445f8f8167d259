"""A registry version's model card, pure: typed facts in, Markdown out (no MLflow here).

Consumes: :class:`CardFacts` (the data, the training set-up and the test metrics, built from the typed config
by :func:`facts`) and the gate's :class:`~pipeline.tracking.gate.Decision`. Produces the Markdown that
:mod:`pipeline.tracking.registry` sets as the version's description (the MLflow UI renders it on the version's
page) and logs as ``model_card.md`` of the evaluation's run. Its sections: the data, the training set-up, the
metrics with per-class accuracy, the gate's decision, intended use and known limits.

The limits name what :func:`pipeline.data.imageprep.to_mnist` assumes of an image, since ``pipeline.predict``
is how a photographed digit reaches the model.

Run: nothing to run; :func:`render` is called by the gate, and tested in ``tests/unit/test_card.py``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.tracking.gate import Decision

#: The training settings a reader needs to reproduce or compare a model; the rest are in the run's params.
KEY_TRAIN_PARAMS = (
    "epochs", "batch_size", "subset", "validation_split", "lr_scale", "lr_schedule", "warmup", "precision",
    "deterministic", "strategy",
)  # fmt: skip
ARTIFACT = "model_card.md"


@dataclass(frozen=True)
class CardFacts:
    """What a card says besides the gate's decision; every field from the config or the evaluation."""

    dataset: str
    classes: tuple[str, ...]
    data_digest: str  # the dataset's content (DatasetConfig.content_hash: the verified source files)
    test_images: int
    model: str
    model_params: dict[str, Any]
    optimizer: str
    optimizer_params: dict[str, Any]
    train_params: dict[str, Any]
    seed: int
    metrics: dict[str, float]  # test metrics, e.g. test_accuracy, test_loss
    per_class_accuracy: dict[str, float]  # class name -> accuracy on the test split
    train_images: int | None = None  # what the training run's dataset input held; None: not recorded
    model_uri: str = ""  # how to load this version (models:/<name>/<version>); filled by the registry
    notes: tuple[str, ...] = field(default=())  # extra lines for "Known limits"


def facts(cfg: Config, metrics: dict[str, float], per_class_accuracy: Any, test_images: int | None = None) -> CardFacts:
    """The card's facts from the typed config and an evaluation's numbers (per-class accuracy in class order)."""
    per_class = [float(a) for a in per_class_accuracy]
    opt = {f.name: _plain(getattr(cfg.optimizer, f.name)) for f in dataclasses.fields(cfg.optimizer)}
    opt.pop("name", None)
    return CardFacts(
        dataset=cfg.dataset.name,
        classes=tuple(cfg.dataset.classes),
        data_digest=cfg.dataset.content_hash(),
        test_images=int(metrics.get("test_samples", 0)) if test_images is None else int(test_images),
        model=cfg.model.name,
        model_params={k: _plain(v) for k, v in cfg.model.params.items()},
        optimizer=cfg.optimizer.name,
        optimizer_params=opt,
        train_params={k: _plain(getattr(cfg.train, k)) for k in KEY_TRAIN_PARAMS if hasattr(cfg.train, k)},
        seed=cfg.seed,
        metrics={k: float(v) for k, v in metrics.items()},
        per_class_accuracy=dict(zip(cfg.dataset.classes, per_class, strict=True)),
    )


def _plain(value: Any) -> Any:
    """A config value as a reader writes it: an enum by its value, a sequence as a list."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _args(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items()) or "no arguments"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("", "")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "| --- | --- |", *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)]


def _gate_rows(d: Decision) -> list[tuple[str, str]]:
    significance = f"p < {d.alpha:g} required" if d.require_significance else "higher accuracy alone (no p-value)"
    rows = [
        ("outcome", _outcome(d)),
        ("reason", d.reason + (f"; {d.settled}" if d.settled else "")),
        ("this model's test accuracy", f"{d.accuracy:.4f}"),
    ]
    if d.champion_version is None:
        rows.append(("champion before", "none: the first model"))
    else:
        rows += [
            ("champion before", f"v{d.champion_version} ({d.champion_accuracy:.4f})"),
            ("b: images only the champion got right", str(d.b)),
            ("c: images only this model got right", str(d.c)),
            ("McNemar's exact p (two-sided)", "n/a" if d.p_value is None else f"{d.p_value:.3g}"),
        ]
    rows += [("rule", f"promoted when more accurate and {significance}"), ("test set digest", f"`{d.test_digest}`")]
    return rows


def _outcome(d: Decision) -> str:
    if d.promoted:
        return f"promoted: v{d.version} holds the alias"
    if d.version is None:
        return "not promoted (not registered)"
    if d.version == d.champion_version:
        return f"re-evaluated: v{d.version} is the champion already"
    return f"not promoted: v{d.version} is registered, another version holds the alias"


def render(card: CardFacts, decision: Decision) -> str:
    """The model card of ``decision``'s model, in Markdown."""
    title = (
        f"{decision.model} v{decision.version}" if decision.version else f"{decision.model}: model {decision.model_id}"
    )
    train = "not recorded" if card.train_images is None else f"{card.train_images:,}"
    lines = [
        f"# Model card: {title}",
        "",
        f"Written by the registry gate for the evaluation run `{decision.run_id}` (logged model "
        f"`{decision.model_id}`)" + (f"; load it as `{card.model_uri}`." if card.model_uri else "."),
        "",
        "## Data",
        "",
        *_table(
            [
                ("dataset", f"{card.dataset} ({len(card.classes)} classes: {', '.join(card.classes)})"),
                ("data digest (verified source files)", f"`{card.data_digest}`"),
                ("training images", train),
                ("test images", f"{card.test_images:,}"),
            ]
        ),
        "",
        "## Training set-up",
        "",
        *_table(
            [
                ("model", f"{card.model} ({_args(card.model_params)})"),
                ("optimizer", f"{card.optimizer} ({_args(card.optimizer_params)})"),
                *((f"train.{k}", _value(v)) for k, v in card.train_params.items()),
                ("seed", str(card.seed)),
            ]
        ),
        "",
        "## Metrics (test split)",
        "",
        *_table([(k, f"{v:.4f}" if k != "test_samples" else f"{v:,.0f}") for k, v in card.metrics.items()]),
        "",
        *_table([(k, f"{v:.4f}") for k, v in card.per_class_accuracy.items()], head=("class", "accuracy")),
        "",
        "## Gate decision",
        "",
        *_table(_gate_rows(decision)),
        "",
        "## Intended use",
        "",
        f"Classifying one image into the {card.dataset} classes, for images like {card.dataset}'s own: "
        "28x28 grayscale, white on black, float pixels in [0, 1], the object centred. Other images go through "
        "`python -m pipeline.predict` (`pipeline.data.imageprep.to_mnist`), which prepares them as MNIST was "
        "made.",
        "",
        "## Known limits",
        "",
        f"- Measured on the {card.dataset} test split only (the digest above); accuracy on other images is "
        "not measured by this card.",
        "- The preparation assumes one digit per image on a plain background that covers the border: a light "
        "border is taken for paper and inverted, and the border's median is the background level.",
        "- It needs contrast: an image whose blurred brightest ink is less than 0.1 above the background is "
        "refused as holding no digit.",
        "- It crops to the ink (pixels above half the brightest), fits that into 20x20 keeping the aspect ratio "
        "and centres it by its centre of mass in 28x28: a second digit, a frame or a large smudge in the image "
        "becomes part of the crop.",
        *(f"- {note}" for note in card.notes),
        "",
    ]
    return "\n".join(lines)
