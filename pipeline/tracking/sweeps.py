"""A Hydra multirun's parent MLflow run: created once, each job's run its child, ended with its table.

Consumes: the sweep's config, name and tags (from :mod:`pipeline.run.sweep`, the Hydra callback). Produces: a
parent run (created with ``MlflowClient``, never the process's active run), ``<sweep dir>/mlflow_parent_run.json``
with its id, the children's results as rows, and at the end ``sweep_results.md``, ``sweep_results.csv``, an
MLflow table and the best run's id on the parent.

The handshake with the jobs is here too: a job learns its parent from its process's environment
(:data:`PARENT_RUN_ENV`, set by the callback wherever the launcher runs the job) or, failing that, from the
record in the sweep folder (:func:`parent_run_id`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.config import Config
from pipeline.core.errors import DataError
from pipeline.tracking.orphans import record_add, record_remove
from pipeline.tracking.registry import load_predictions
from pipeline.tracking.runs import RunRecord, run_tags
from pipeline.tracking.store import create_run, retry, setup, tracking_uri

log = logging.getLogger(__name__)
MAX_CHILDREN = 10_000
#: Set in each job's process while the job runs: the parent run's id.
PARENT_RUN_ENV = "PIPELINE_SWEEP_PARENT_RUN_ID"
#: Where a multirun's parent MLflow run is recorded, inside the sweep folder.
PARENT_RUN_FILE = "mlflow_parent_run.json"


def parent_run_id(sweep_dir: Path | str) -> str | None:
    """The sweep's parent MLflow run id: the one the sweep callback put in this job's environment, else the one
    it recorded in the sweep folder (a launcher that skips Hydra's job callbacks)."""
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    path = Path(sweep_dir) / PARENT_RUN_FILE
    if not path.is_file():
        log.warning(
            "%s not found: this job's run gets no parent (is pipeline.run.sweep.SweepCallback configured?)", path
        )
        return None
    try:
        return RunRecord.read(path).run_id
    except DataError as exc:
        log.warning("%s; no parent", exc)
        return None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def results_rows(children: list[Any]) -> list[dict[str, Any]]:
    """One row per child run, best test accuracy first (runs without one last)."""
    rows = []
    for run in children:
        m = run.data.metrics
        rows.append(
            {
                "overrides": run.data.tags.get("overrides", ""),
                "test_accuracy": m.get("test_accuracy"),
                "test_loss": m.get("test_loss"),
                "train_time_s": m.get("train_time_s"),
                "val_accuracy": m.get("val_accuracy"),
                "status": run.info.status,
                "run_id": run.info.run_id,
            }
        )
    rows.sort(key=lambda r: -r["test_accuracy"] if is_number(r["test_accuracy"]) else math.inf)
    return rows


class ParentRun:
    """The parent run of one sweep, in the sweep's store."""

    def __init__(self, cfg: Config) -> None:
        self.tracking_uri = tracking_uri(cfg.tracking)
        # The experiment (and the SQLite schema) is created here, once, before parallel jobs start. An
        # unreachable server or a refused login ends the sweep here, before any job.
        self.experiment_id = setup(cfg.tracking)
        self.cfg = cfg
        self.run_id: str | None = None

    def create(self, name: str, tags: dict[str, str], sweep_dir: Path) -> str:
        all_tags = run_tags(self.cfg, tags)
        all_tags.pop("optimizer", None)  # the parent spans optimizers
        client = mlflow.MlflowClient(self.tracking_uri)
        self.run_id = create_run(client, self.experiment_id, name, all_tags)
        # Owned by this process: if it is SIGKILLed, the next run against the store marks the parent KILLED.
        record_add(self.tracking_uri, self.run_id)
        RunRecord(self.run_id, self.experiment_id).write(sweep_dir / PARENT_RUN_FILE)
        return self.run_id

    def children(self) -> list[dict[str, Any]]:
        client = mlflow.MlflowClient(self.tracking_uri)
        found = retry(
            client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
            max_results=MAX_CHILDREN,
        )
        return results_rows(found)

    def predictions(self, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return load_predictions(run_id, self.tracking_uri)
        except (MlflowException, OSError):  # a job that failed before its evaluation
            return None

    def log_results(self, rows: list[dict[str, Any]], table: str, csv_text: str, columns: list[str]) -> None:
        client = mlflow.MlflowClient(self.tracking_uri)
        if rows:
            retry(client.log_text, self.run_id, table + "\n", "sweep_results.md")
            retry(client.log_text, self.run_id, csv_text, "sweep_results.csv")
            data = {c: [r[c] for r in rows] for c in columns}
            retry(client.log_table, self.run_id, data=data, artifact_file="sweep_results.json")
        best = next((r for r in rows if is_number(r["test_accuracy"])), None)
        metrics = {"child_runs": len(rows), "failed_child_runs": sum(r["status"] != "FINISHED" for r in rows)}
        if best:
            metrics["best_test_accuracy"] = best["test_accuracy"]
            retry(client.set_tag, self.run_id, "best_run_id", best["run_id"])
            retry(client.set_tag, self.run_id, "best_overrides", best["overrides"])
        for key, value in metrics.items():
            retry(client.log_metric, self.run_id, key, float(value))

    def end(self, status: str) -> None:
        client = mlflow.MlflowClient(self.tracking_uri)
        retry(client.set_terminated, self.run_id, status)
        record_remove(self.tracking_uri, str(self.run_id))  # only after the run has ended
