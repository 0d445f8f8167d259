"""Stage ``evaluate``: test the saved model, report what it really scores, and gate it into the registry.

Consumes: ``paths.model``, ``paths.processed_dir``/test.npz, and the MLflow run and logged model that train
recorded in ``paths.run_info``. Produces: ``paths.metrics`` (``test_loss``, ``test_accuracy``, ``test_samples``:
DVC metrics), ``paths.confusion`` (actual,predicted per misclassified test image: the errors) and
``paths.per_class`` (class,error_rate,errors,images): DVC plots; ``paths.registry`` (the gate's decision,
:mod:`pipeline.tracking.registry`: ``registered`` is false for a model that was not promoted); in MLflow the
same numbers linked to the logged model by ``model_id`` (per-class accuracies as ``test_accuracy_class_<name>``),
the full confusion matrix as a figure (log colour scale) and the report files.

:func:`evaluate` scores (:mod:`pipeline.model.score`) and writes the reports; :func:`run` logs and gates what
it returns. :func:`main` logs into the training run while that run holds no evaluation yet, else into a new
evaluation run, a child of the training run (:func:`pipeline.tracking.evaluation_run`), and records which in
``paths.eval_info``. It runs :func:`evaluate` in a forked child process (:func:`pipeline.core.forking.forked`)
while it imports MLflow and opens that run: 2-2.5 s of the stage that would otherwise add up.

Run: ``dvc repro evaluate``, or ``python -m pipeline.stages.evaluate`` (reads params.yaml).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path, remove, write_json
from pipeline.core.forking import forked
from pipeline.core.timing import Timer
from pipeline.data.formats import load_split
from pipeline.model.score import Scores
from pipeline.stages import stage_main
from pipeline.tracking.gate import GateReport, test_digest
from pipeline.tracking.records import RunRecord, verify_model_file

log = logging.getLogger(__name__)
#: ``paths.confusion``'s columns: one row per misclassified test image (DVC's confusion template).
CONFUSION_COLUMNS = ("actual", "predicted")
#: ``paths.per_class``'s columns: error_rate = 1 - the class's accuracy (6 digits), of ``images`` test images.
PER_CLASS_COLUMNS = ("class", "error_rate", "errors", "images")


@dataclass
class EvalResult(Scores):
    """The model's scores on the test split, and what the stage adds: the test set's identity and its files."""

    digest: str = ""  # the test set's content (gate.test_digest): models compare only on the same one
    inputs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # the test images scored
    report_paths: list[Path] = field(default_factory=list)  # the files written: metrics, per-class, confusion
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: import, load model, predict...


@dataclass
class Evaluated:
    result: EvalResult
    gate: GateReport


def evaluate(cfg: Config, trained: RunRecord | None = None) -> EvalResult:
    """Score ``paths.model`` on the test split and write the reports; return the numbers. With ``trained`` (the
    training's run record), the file is first checked to be the model that run saved and logged."""
    from pipeline.model.runtime import import_tensorflow
    from pipeline.model.score import load_model, score

    paths = cfg.paths
    timer = Timer("evaluate")
    if trained is not None:
        verify_model_file(paths.model, trained, paths.run_info)  # before any report: never a wrong number
    remove(paths.metrics, paths.confusion, paths.per_class)
    import_tensorflow()
    timer.mark("import tensorflow")
    model = load_model(paths.model)
    timer.mark("load model")
    x, y = load_split(paths.processed_dir, "test", cfg.dataset.num_classes)
    if model.input_shape[1:] != x.shape[1:]:
        raise DataError(f"{paths.model}: takes images {model.input_shape[1:]}, the test split holds {x.shape[1:]}")
    timer.mark("load data")
    scores = score(model, x, y, cfg.dataset.num_classes)
    timer.mark("predict")
    result = EvalResult(**vars(scores), digest=test_digest(x, y), inputs=x)
    write_reports(cfg, result)
    timer.mark("reports")
    result.timings = timer.phases()
    log.info("test_accuracy %.4f, test_loss %.4f", result.metrics["test_accuracy"], result.metrics["test_loss"])
    return result


def write_reports(cfg: Config, result: EvalResult) -> None:
    """The report files, each class by its name (``dataset.classes``): ``paths.confusion`` (``actual,predicted``:
    one row per misclassified test image, the errors only, so DVC's confusion plot shows where the model goes
    wrong; a perfect model writes just the header), ``paths.per_class`` (``class,error_rate,errors,images``)
    and ``paths.metrics``. The full matrix is MLflow's figure (:func:`confusion_figure`)."""
    paths, names = cfg.paths, cfg.dataset.classes
    with atomic_path(paths.confusion) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CONFUSION_COLUMNS)
        # One row per wrong image, expanded from the matrix's off-diagonal cells: what DVC's template plots.
        for (actual, predicted), count in np.ndenumerate(result.confusion):
            if actual != predicted:
                writer.writerows([[names[actual], names[predicted]]] * int(count))
    images = result.confusion.sum(axis=1)
    errors = images - result.confusion.diagonal()
    with atomic_path(paths.per_class) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_CLASS_COLUMNS)
        writer.writerows(
            [names[c], round(1.0 - a, 6) if images[c] else 0.0, int(errors[c]), int(images[c])]
            for c, a in enumerate(result.per_class_accuracy)
        )
    write_json(paths.metrics, result.metrics)
    result.report_paths = [Path(paths.metrics), Path(paths.per_class), Path(paths.confusion)]


def confusion_figure(cm: np.ndarray, title: str, classes: list[str] | None = None) -> Any:
    """The full confusion matrix as a matplotlib figure: counts in each cell, actual on y, predicted on x, each
    class by its name. The colour scale is logarithmic, so a handful of errors shows beside a diagonal of
    hundreds; an empty cell stays white."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    shown = np.ma.masked_less_equal(cm, 0)  # zero cells masked: LogNorm cannot place them; drawn as the background
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=1, vmax=max(int(cm.max()), 2)))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images (log scale)")
    ticks = range(len(cm))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title=title)
    if classes is not None:
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticklabels(classes, fontsize=7)
    dark = np.sqrt(max(int(cm.max()), 1))  # halfway up the log scale
    for (i, j), count in np.ndenumerate(cm):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > dark else "black")
    return fig


def run(cfg: Config, result: EvalResult, model_id: str | None, run_id: str) -> Evaluated:
    """Log an evaluation into the active run and gate its model: the one of the DVC stage and the Hydra app."""
    log_evaluation(cfg, result, model_id)
    report = gate(cfg, result, model_id, run_id)
    export_champion(cfg, report, run_id)
    return Evaluated(result, report)


def log_evaluation(cfg: Config, result: EvalResult, model_id: str | None) -> None:
    """Log an evaluation to the active run; its metrics are linked to the logged model ``model_id``."""
    from pipeline import tracking
    from pipeline.tracking.registry import log_predictions

    if not tracking.active():
        return
    per_class = {
        f"test_accuracy_class_{metric_name(name)}": a
        for name, a in zip(cfg.dataset.classes, result.per_class_accuracy, strict=True)
    }
    tracking.log_dataset(cfg, result.inputs, result.labels, split="test", context="evaluation")
    tracking.log_metrics({**result.metrics, **per_class}, model_id=model_id)
    for path in result.report_paths:
        tracking.log_artifact(path, "reports")
    title = f"test accuracy {result.metrics['test_accuracy']:.4f}"
    figure = confusion_figure(result.confusion, title, cfg.dataset.classes)
    tracking.log_figure(figure, "plots/confusion_matrix.png")
    log_predictions(result.predictions, result.labels)


def metric_name(class_name: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, ``_ - . /`` and spaces; anything else
    becomes ``_``): ``test_accuracy_class_7``, ``test_accuracy_class_T-shirt/top``."""
    return re.sub(r"[^\w\-./ ]", "_", class_name)


def import_for_logging() -> None:
    """Import what :func:`log_evaluation` and :func:`gate` use (matplotlib's Figure, SciPy's binomial test: about
    1 s) while the child still scores, not after it has finished."""
    import matplotlib.figure  # noqa: F401
    import scipy.stats  # noqa: F401


def gate(cfg: Config, result: EvalResult, model_id: str | None, run_id: str) -> GateReport:
    """The registry gate for this evaluation (:mod:`pipeline.tracking.registry`); writes and returns the report."""
    if not cfg.registry.enabled or model_id is None:
        why = "registry.enabled is false" if not cfg.registry.enabled else "no model was logged (tracking.log_model)"
        report = GateReport(registered=False, reason=why)
    else:
        from pipeline.tracking.card import facts
        from pipeline.tracking.registry import gate as registry_gate

        def predict(model_uri: str) -> np.ndarray:  # another model on this test set (a champion scored elsewhere)
            from pipeline.model.score import forward
            from pipeline.tracking import load_keras_model

            x, _ = load_split(cfg.paths.processed_dir, "test", cfg.dataset.num_classes)
            return forward(load_keras_model(model_uri), x).argmax(axis=1)

        card = facts(cfg, result.metrics, result.per_class_accuracy, len(result.labels))  # the version's model card
        decision = registry_gate(
            cfg.registry, model_id, run_id, result.predictions, result.labels, result.digest, predict, card=card
        )
        report = GateReport(registered=decision.version is not None, decision=decision)
    write_json(cfg.paths.registry, report.as_dict())
    return report


def export_champion(cfg: Config, report: GateReport, run_id: str) -> dict[str, str]:
    """The champion, as the files ``registry.export`` names (:mod:`pipeline.model.export`), logged
    into the evaluation run and tagged on its version (:mod:`pipeline.tracking.exports`); return the tags.
    Nothing for a model that is not the champion, or whose version has them all. In the DVC stage the scoring child has ended: TensorFlow is
    imported here, after the fork, and only for a promotion."""
    decision = report.decision
    if decision is None or decision.version is None or not cfg.registry.export:
        return {}
    # The champion: promoted now, or re-gated as the holder (a rerun after an export failed, which must not leave
    # the champion without its files): only the formats its version lacks.
    if not (decision.promoted or decision.reason == "already the champion"):
        return {}
    import tempfile
    import time

    from pipeline import tracking
    from pipeline.model.export import ONNX_PACKAGES, export, onnx_available
    from pipeline.model.score import load_model

    have = tracking.exported_formats(decision.model, decision.version)
    formats = [f for f in cfg.registry.export if f not in have]
    if not formats:
        return {}
    if "onnx" in formats and not onnx_available():
        log.warning("export: no ONNX file (needs %s: pip install -e '.[export]')", ", ".join(ONNX_PACKAGES))
        formats.remove("onnx")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        files = export(load_model(cfg.paths.model), folder, formats)
        tags = tracking.log_exports(files, run_id, decision.model, decision.version)
    log.info(
        "export: %s v%s as %s in %.1f s",
        decision.model,
        decision.version,
        ", ".join(files),
        time.perf_counter() - start,
    )
    return tags


def main(fast_exit: bool = False) -> None:
    def job(cfg: Config, timer: Timer) -> None:
        remove(cfg.paths.eval_info, cfg.paths.registry)
        trained = RunRecord.read(cfg.paths.run_info)
        verify_model_file(cfg.paths.model, trained, cfg.paths.run_info)  # before any run opens
        with forked(evaluate, cfg) as scored:  # checked just above: the child does not hash the file again
            from pipeline import tracking

            timer.mark("import mlflow")
            with tracking.evaluation_run(cfg, trained) as active_run:
                timer.mark("open run")
                import_for_logging()
                timer.mark("import for logging")
                result = scored()  # the child's exception, if any, is raised here: the run ends FAILED
                timer.mark("wait for evaluate")
                timer.beside(result.timings, "evaluate")
                run(cfg, result, trained.model_id, active_run.info.run_id)
                timer.mark("log and gate")
        tracking.record_of(active_run, trained.model_id, trained.run_id).write(cfg.paths.eval_info)
        timer.mark("close run")

    stage_main("evaluate", job, fast_exit)


if __name__ == "__main__":
    main(fast_exit=True)
