"""Stage ``train``: fit the seed's Basic_CNN on the processed training split and save it.

Consumes: ``paths.processed_dir``/train.npz and the ``model``, ``optimizer``, ``train``, ``loss``,
``metrics`` and ``seed`` config. Produces: ``paths.model`` (Keras format), ``paths.history`` (per-epoch
metrics, a DVC plot), and in the active MLflow run: per-epoch metrics, the training time, the parameter
count and the model (``mlflow.keras.log_model`` with a signature, so ``mlflow.pyfunc`` serves it).

A killed fit resumes: Keras' BackupAndRestore keeps weights and optimizer state every
``train.backup_every`` steps under ``paths.backup_dir/<config hash>``; a rerun with the same config
restores them (Keras replays the interrupted epoch from its first batch) and removes them when done.

Run: ``python -m pipeline.train`` (reads params.yaml; opens the MLflow run that ``pipeline.evaluate``
completes), or ``dvc repro train``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from pipeline import tracking
from pipeline.config import Config, TrainConfig, config_hash, load_params
from pipeline.data import load_split
from pipeline.errors import run_cli
from pipeline.files import atomic_path, remove, write_json
from pipeline.model import build_model, build_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_path: Path
    parameters: int
    samples: int
    train_seconds: float  # wall time of model.fit
    history: dict[str, list[float]] = field(default_factory=dict)
    precision: str = "float32"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(train: TrainConfig) -> str:
    """``auto``: mixed_float16 on a GPU, mixed_bfloat16 on CPUs with AVX512_BF16/AMX, float32 otherwise."""
    if train.precision != "auto":
        return train.precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics (and its wall time) to the active MLflow run in one batched call."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = dict(logs or {})
        metrics["epoch_time_s"] = time.perf_counter() - self._start
        tracking.log_metrics(metrics, step=epoch)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backups are renamed into place: a kill during a save leaves the previous one."""

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp_weights = folder / "partial.weights.h5"  # Keras insists on the .weights.h5 suffix
        self.model.save_weights(str(tmp_weights), overwrite=True)
        os.replace(tmp_weights, self._weights_path)
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})


def fit_verbosity(train: TrainConfig) -> int:
    if train.verbose == "auto":
        return 1 if sys.stdout.isatty() else 2  # a progress bar for people, one line per epoch for logs
    return int(train.verbose)


def compile_model(cfg: Config, precision: str) -> keras.Model:
    keras.mixed_precision.set_dtype_policy(precision)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer, cfg.train.lr_scale),
        loss=cfg.loss,
        metrics=list(cfg.metrics),
    )
    return model


def train(cfg: Config) -> TrainResult:
    """Fit the model described by ``cfg`` and save it to ``cfg.paths.model``; log to the active run, if any."""
    paths, t = cfg.paths, cfg.train
    remove(paths.model, paths.history)  # a failed run must not leave the previous model looking current
    x, y = load_split(paths.processed_dir, "train", cfg.dataset.num_classes)
    if t.subset is not None:
        x, y = x[: t.subset], y[: t.subset]
    keras.utils.set_random_seed(cfg.seed)
    precision = resolve_precision(t)
    model = compile_model(cfg, precision)
    backup = Path(paths.backup_dir) / config_hash(cfg, ("dataset", "model", "optimizer", "train", "loss", "metrics", "seed"))
    if backup.exists():
        log.warning("resuming an interrupted training from %s", backup)
    start = time.perf_counter()
    with atomic_path(paths.history) as history_tmp:
        hist = model.fit(
            x,
            y,
            batch_size=t.batch_size,
            epochs=t.epochs,
            shuffle=t.shuffle,
            validation_split=t.validation_split,
            verbose=fit_verbosity(t),
            callbacks=[
                AtomicBackupAndRestore(str(backup), save_freq=t.backup_every),
                keras.callbacks.CSVLogger(str(history_tmp)),
                MlflowEpochLogger(),
            ],
        )
    train_seconds = time.perf_counter() - start
    with atomic_path(paths.model) as model_tmp:
        model.save(model_tmp)
    result = TrainResult(
        model_path=Path(paths.model),
        parameters=model.count_params(),
        samples=len(x),
        train_seconds=train_seconds,
        history={k: [float(v) for v in vs] for k, vs in hist.history.items()},
        precision=precision,
    )
    if tracking.active():
        tracking.log_metrics({"train_time_s": train_seconds, "parameters": result.parameters, "train_samples": len(x)})
        tracking.set_tags({"precision": precision})
        tracking.log_artifact(paths.history, "reports")
        if cfg.tracking.log_model:
            log_model(model, x[:1])
    log.info("trained %d parameters on %d samples in %.1f s", result.parameters, len(x), train_seconds)
    return result


def model_requirements() -> list[str]:
    """What serving the model needs, from the installed versions: MLflow's own inference of this
    list reloads the model in a subprocess and costs 6-8 s a run here."""
    from importlib import metadata

    reqs = []
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(model: keras.Model, example: np.ndarray) -> None:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, np.asarray(model(example, training=False)))
    tracking.retry(
        mlflow.keras.log_model, model, name="model", signature=signature, pip_requirements=model_requirements()
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_params()
    remove(cfg.paths.run_info)
    with tracking.start_run(cfg) as run:
        train(cfg)
        write_json(cfg.paths.run_info, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})


if __name__ == "__main__":
    run_cli(main, fast_exit=True)
