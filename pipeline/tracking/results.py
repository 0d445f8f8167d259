"""What a job logs into its active run besides params: metrics as training goes, data inputs, figures, files.

Consumes: plain numbers, arrays and paths from the stages (nothing here knows Keras). Produces: MLflow metrics
(a training curve every ``train.log_every`` steps, each epoch's metrics), dataset inputs (the runs list's
Dataset column) and artifacts. Each function does nothing when no run is active, so the same job code runs
with tracking and without.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import mlflow

from pipeline.config import Config
from pipeline.tracking.runs import active
from pipeline.tracking.store import retry


class MetricsLogger:
    """Logs a fit's progress to the active run (an observer of :func:`pipeline.model.fit.fit`): every curve
    point as ``batch_<name>`` at the global step, and each epoch's metrics and wall time at step = epoch."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        log_metrics({f"batch_{k}": v for k, v in metrics.items()}, step=step)

    def on_epoch(self, epoch: int, metrics: dict[str, float], seconds: float) -> None:
        log_metrics({**metrics, "epoch_time_s": seconds}, step=epoch)


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    if active():
        retry(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id)


def log_artifact(path: Path | str, artifact_path: str | None = None) -> None:
    if active():
        retry(mlflow.log_artifact, str(path), artifact_path)


def log_figure(figure: Any, artifact_file: str) -> None:
    if active():
        retry(mlflow.log_figure, figure, artifact_file)


def log_dict(data: Any, artifact_file: str) -> None:
    if active():
        retry(mlflow.log_dict, data, artifact_file)


def log_dataset(cfg: Config, x: Any, y: Any, split: str, context: str) -> None:
    """Record the data a run used as an MLflow dataset input (the runs list's Dataset column): named
    ``<dataset>-<split>``, its digest from the content hashes of the verified files and of the preparing
    code, with the subset; its source the processed file."""
    if not active():
        return
    from mlflow.data.numpy_dataset import from_numpy

    from pipeline.core.closure import source_hash
    from pipeline.data.prepare import PREPARING_MODULE

    subset = cfg.train.subset if split == "train" else None
    name = f"{cfg.dataset.name}-{split}" + (f"[:{subset}]" if subset else "")
    made_by = source_hash(PREPARING_MODULE)  # the same content, prepared by other code, is other data
    digest = hashlib.sha256(f"{cfg.dataset.content_hash()}:{made_by}:{split}:{subset}".encode()).hexdigest()[:16]
    source = str((Path(cfg.paths.processed_dir) / f"{split}.npz").resolve())
    with warnings.catch_warnings():  # MLflow registers two local-file source types and says so on each call
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = from_numpy(features=x, targets=y, source=source, name=name, digest=digest)
    retry(mlflow.log_input, dataset, context=context)
