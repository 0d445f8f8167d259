"""Stage ``evaluate``: test the saved model and report what it really scores.

Consumes: ``paths.model`` (loaded with ``safe_mode``), ``paths.processed_dir``/test.npz, and the MLflow
run and logged model that train recorded in ``paths.run_info``. Produces: ``paths.metrics``
(``test_loss``, ``test_accuracy``, ``test_samples``: DVC metrics), ``paths.confusion`` (actual,predicted
per test image) and ``paths.per_class`` (accuracy per class): DVC plots. :func:`evaluate` is pure with
respect to MLflow; its caller logs the result with :func:`log_evaluation` (the same numbers linked to the
logged model by ``model_id``, a confusion-matrix figure, the report files). :func:`main` logs into the
training run while that run holds no evaluation yet, else into a new evaluation run, a child of the
training run (:func:`pipeline.tracking.evaluation_run`), and records which in ``paths.eval_info``. It runs
:func:`evaluate` in a forked child process (:func:`pipeline.runtime.forked`) while it imports MLflow and opens
that run, and logs what the child returns.

One forward pass (:func:`forward`) gives the probabilities; the confusion matrix and accuracy are counted
with NumPy from the argmax and cross-checked against Keras' sparse accuracy metric on the same
probabilities, so a wrong metric (the seed's 0.0992 "accuracy") fails the stage instead of being reported. (scikit-learn would do the
counting too, but importing it costs this stage about 1 s, and the stages' overhead is measured.)

Run: ``python -m pipeline.evaluate`` (reads params.yaml), or ``dvc repro evaluate``.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Config, load_params
from pipeline.data import load_split
from pipeline.errors import DataError, run_cli
from pipeline.files import atomic_path, remove, write_json
from pipeline.runtime import forked, import_tensorflow
from pipeline.timing import Timer

# TensorFlow and MLflow are imported where used: a bad params.yaml is reported before either loads.
if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]  # test_loss, test_accuracy, test_samples
    per_class_accuracy: list[float]
    confusion: np.ndarray  # [actual, predicted] counts
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # predicted class per test image
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the test labels
    digest: str = ""  # the test set's content (registry.test_digest): models compare only on the same one
    inputs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # the test images scored
    report_paths: list[Path] = field(default_factory=list)  # the files written: metrics, per-class, confusion
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: import, load model, predict...


def load_model(path: Path | str) -> keras.Model:
    """Load a Keras model with safe_mode (no arbitrary code from lambdas); a bad file names itself."""
    import_tensorflow()
    import keras

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (run the train stage: dvc repro train)")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile errors... for a bad file
        raise DataError(f"{path}: not a loadable Keras model ({type(exc).__name__}: {exc})") from None


def forward(model: keras.Model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The model's outputs for ``x`` in inference mode, batch by batch through one traced function.

    The same numbers as ``model.predict`` (bit for bit, any batch size: ``tests/unit/test_model.py``) in
    2.1-2.2 s instead of 2.3-2.7 s for the 10,000 test images here (4 rounds of fresh processes): Keras'
    predict loop adds its data adapter, iterator and output gathering to the forward pass.
    """
    tf = import_tensorflow()
    signature = [tf.TensorSpec([None, *x.shape[1:]], tf.as_dtype(x.dtype))]  # one trace for every batch size
    call = tf.function(lambda batch: model(batch, training=False), input_signature=signature)
    outputs = [call(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, *model.output_shape[1:]), np.float32)


def score(model: keras.Model, x: np.ndarray, y: np.ndarray, num_classes: int) -> EvalResult:
    import_tensorflow()
    import keras

    start = time.perf_counter()
    probs = np.asarray(forward(model, x), dtype=np.float32)
    elapsed = time.perf_counter() - start
    log.info("scored %d test images in %.1f s (%.0f images/s)", len(x), elapsed, len(x) / max(elapsed, 1e-9))
    pred = probs.argmax(axis=1)
    cm = np.bincount(y.astype(np.int64) * num_classes + pred, minlength=num_classes**2).reshape(num_classes, -1)
    accuracy = float(np.trace(cm) / len(y))
    keras_accuracy = float(keras.metrics.SparseCategoricalAccuracy()(y, probs))
    if abs(accuracy - keras_accuracy) > 1e-6:
        raise AssertionError(f"accuracy cross-check failed: argmax count {accuracy} != Keras {keras_accuracy}")
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, probs)))
    per_class = (cm.diagonal() / np.maximum(cm.sum(axis=1), 1)).tolist()
    metrics = {"test_loss": loss, "test_accuracy": accuracy, "test_samples": len(y)}
    return EvalResult(metrics, per_class, cm, predictions=pred, labels=np.asarray(y))


def evaluate(cfg: Config) -> EvalResult:
    """Score ``paths.model`` on the test split and write the reports; return the numbers."""
    paths = cfg.paths
    timer = Timer("evaluate")
    remove(paths.metrics, paths.confusion, paths.per_class)
    import_tensorflow()
    timer.mark("import tensorflow")
    model = load_model(paths.model)
    timer.mark("load model")
    x, y = load_split(paths.processed_dir, "test", cfg.dataset.num_classes)
    timer.mark("load data")
    result = score(model, x, y, cfg.dataset.num_classes)
    timer.mark("predict")
    from pipeline.registry import test_digest

    result.digest, result.inputs = test_digest(x, y), x
    write_reports(cfg, result)
    timer.mark("reports")
    result.timings = timer.phases()
    log.info("test_accuracy %.4f, test_loss %.4f", result.metrics["test_accuracy"], result.metrics["test_loss"])
    return result


def write_reports(cfg: Config, result: EvalResult) -> None:
    paths = cfg.paths
    with atomic_path(paths.confusion) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        # One row per image, expanded from the matrix: what DVC's confusion template plots.
        for actual, row in enumerate(result.confusion):
            for predicted, count in enumerate(row):
                writer.writerows([[actual, predicted]] * int(count))
    with atomic_path(paths.per_class) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "accuracy"])
        writer.writerows([c, round(a, 6)] for c, a in enumerate(result.per_class_accuracy))
    write_json(paths.metrics, result.metrics)
    result.report_paths = [Path(paths.metrics), Path(paths.per_class), Path(paths.confusion)]


def confusion_figure(cm: np.ndarray, title: str):
    """The confusion matrix as a matplotlib figure: counts in each cell, actual on y, predicted on x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(cm))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title=title)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > cm.max() / 2 else "black"
        )
    return fig


def log_evaluation(cfg: Config, result: EvalResult, model_id: str | None) -> None:
    """Log an evaluation to the active run; its metrics are linked to the logged model ``model_id``."""
    import mlflow

    from pipeline import tracking

    if not tracking.active():
        return

    per_class = {f"test_accuracy_class_{c}": a for c, a in enumerate(result.per_class_accuracy)}
    tracking.log_dataset(cfg, result.inputs, result.labels, split="test", context="evaluation")
    tracking.log_metrics({**result.metrics, **per_class}, model_id=model_id)
    for path in result.report_paths:
        tracking.log_artifact(path, "reports")
    title = f"test accuracy {result.metrics['test_accuracy']:.4f}"
    tracking.retry(mlflow.log_figure, confusion_figure(result.confusion, title), "plots/confusion_matrix.png")
    from pipeline.registry import log_predictions

    log_predictions(result.predictions, result.labels)


def import_for_logging() -> None:
    """Import what :func:`log_evaluation` and :func:`gate` use (matplotlib's Figure, SciPy's binomial test: about
    1 s) while the child still scores, not after it has finished."""
    import matplotlib.figure  # noqa: F401
    import scipy.stats  # noqa: F401


def gate(cfg: Config, result: EvalResult, model_id: str | None, run_id: str) -> dict[str, object]:
    """The registry gate for this evaluation (:mod:`pipeline.registry`); writes and returns the decision."""
    from pipeline.registry import gate as registry_gate

    if not cfg.registry.enabled or model_id is None:
        why = "registry.enabled is false" if not cfg.registry.enabled else "no model was logged (tracking.log_model)"
        report: dict[str, object] = {"registered": False, "reason": why}
    else:

        def predict(model_uri: str) -> np.ndarray:  # another model on this test set (a champion scored elsewhere)
            import_tensorflow()
            import mlflow

            x, _ = load_split(cfg.paths.processed_dir, "test", cfg.dataset.num_classes)
            return forward(mlflow.keras.load_model(model_uri), x).argmax(axis=1)

        decision = registry_gate(
            cfg.registry, model_id, run_id, result.predictions, result.labels, result.digest, predict
        )
        report = {"registered": True, **decision.as_dict()}
    write_json(cfg.paths.registry, report)
    return report


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    timer = Timer("evaluate")
    cfg = load_params()
    timer.mark("config")
    remove(cfg.paths.eval_info, cfg.paths.registry)
    # The scoring (TensorFlow's import, the forward pass, the report files) runs in a child process while
    # this one imports MLflow and opens the run: 2-2.5 s of the stage that would otherwise add up.
    with forked(evaluate, cfg) as scored:
        from pipeline import tracking

        timer.mark("import mlflow")
        trained = tracking.RunRecord.read(cfg.paths.run_info)
        with tracking.evaluation_run(cfg, trained) as run:
            timer.mark("open run")
            import_for_logging()
            timer.mark("import for logging")
            result = scored()  # the child's exception, if any, is raised here: the run ends FAILED
            timer.mark("wait for evaluate")
            timer.beside(result.timings, "evaluate")
            log_evaluation(cfg, result, trained.model_id)
            timer.mark("log to mlflow")
            gate(cfg, result, trained.model_id, run.info.run_id)
            timer.mark("registry")
    tracking.record_of(run, trained.model_id, trained.run_id).write(cfg.paths.eval_info)
    timer.mark("close run")
    timer.report()


if __name__ == "__main__":
    run_cli(main, fast_exit=True)
