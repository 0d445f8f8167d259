"""MLflow runs that end honestly, what they are tagged with, and the records that link DVC's outputs to them.

Consumes: the typed config and the environment DVC and git give a stage. Produces: runs holding every config
value as a dotted param (secrets masked) and tags (git commit, data hash, DVC experiment name); the run
record files (``paths.run_info``, ``paths.eval_info``) that tie DVC's outputs to those runs.

Run status. A run ends FINISHED on success, FAILED on an exception and KILLED on SIGINT or SIGTERM (SIGTERM
handling is in place before the run is created), keeping what was logged so far; its owner record
(:mod:`pipeline.tracking.orphans`) is removed only after it has ended.

History. A finished run is never rewritten by a later execution: ``evaluate`` completes the run that
``train`` opened only while that run holds no evaluation yet; otherwise (evaluation code or params changed,
``train`` restored from DVC's run-cache) the evaluation gets a run of its own, a child of the training run,
and its metrics are linked to the logged model by ``model_id``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.config import Config, flatten, to_dict
from pipeline.core.errors import DataError, server_fault
from pipeline.core.redact import redact, redact_tree
from pipeline.tracking.orphans import reap_orphans, record_add, record_remove
from pipeline.tracking.records import RunRecord
from pipeline.tracking.store import create_run, one_attempt, retry, setup, tracking_uri

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM arrived; unwinds like KeyboardInterrupt so the run is marked KILLED."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration of the block."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (joblib workers): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def data_hash(cfg: Config) -> str:
    return cfg.dataset.content_hash()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: Config, extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {"data_sha256": data_hash(cfg), "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name}
    # The run's user: the login on a tracking server with accounts, else the local user (MLflow's own default).
    tags["mlflow.user"] = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        tags["dvc"] = "true"
    tags.update(extra or {})
    return {k: redact(str(v)) for k, v in tags.items()}


def default_run_name(cfg: Config) -> str:
    """What a run is called unless ``tracking.run_name`` says: the DVC experiment's name under ``dvc exp run``,
    else what usually differs between runs (``adam-lr0.001-bs32``), not one of MLflow's random names."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    t = cfg.train
    name = f"{cfg.optimizer.name}-lr{cfg.optimizer.learning_rate * t.lr_scale:g}-bs{t.batch_size}"
    if t.epochs != 1:
        name += f"-e{t.epochs}"
    return name if cfg.dataset.name == "mnist" else f"{cfg.dataset.name}-{name}"


def config_params(cfg: Config) -> dict[str, str]:
    """Every config value as a param with a dotted key (``optimizer.name``), secrets masked."""
    return {k: str(v) for k, v in flatten(redact_tree(to_dict(cfg))).items()}


@contextlib.contextmanager
def start_run(
    cfg: Config,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Create (or, with ``run_id``, reopen) a run and make it active; end it FINISHED, FAILED or KILLED."""
    with sigterm_raises():
        experiment_id = setup(cfg.tracking)
        uri = mlflow.get_tracking_uri()
        reap_orphans(uri)
        client = mlflow.MlflowClient(uri)
        fresh = run_id is None
        if run_id is None:
            all_tags = run_tags(cfg, tags)
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            name = run_name or cfg.tracking.run_name or default_run_name(cfg)
            run_id = create_run(client, experiment_id, redact(name), all_tags)
        status: str | None = "FAILED"
        try:
            record_add(uri, run_id)
            try:
                run = retry(mlflow.start_run, run_id=run_id)
            except MlflowException as exc:
                if fresh:
                    raise
                status = None  # not ours to end: the run could not be reopened at all
                raise DataError(f"MLflow run {run_id} cannot be reopened in {redact(uri)}: {exc.message}") from None
            if fresh:
                retry(mlflow.log_params, config_params(cfg))
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, Terminated):
            status = "KILLED"
            raise
        finally:
            ended = status is None or _end(client, run_id, status, failing=sys.exc_info()[1])
            if ended:
                record_remove(uri, run_id)  # only after the run has ended: else the next run reaps it KILLED


def _end(client: mlflow.MlflowClient, run_id: str, status: str, failing: BaseException | None) -> bool:
    """End the run ``status``; True when it is ended. While another error unwinds (``failing``: the store itself
    failing), a failure to end it is logged, not raised over that error: its owner record stays, and the next run
    against the store (:func:`pipeline.tracking.orphans.reap_orphans`) marks it KILLED once this process is gone.
    When that error is a tracking server's that MLflow already retried, ending the run is tried once."""
    try:
        with one_attempt() if failing is not None and server_fault(failing) else contextlib.nullcontext():
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                retry(mlflow.end_run, status=status)
            else:
                retry(client.set_terminated, run_id, status=status)
        return True
    except Exception as exc:
        if failing is None:
            raise
        log.warning("MLflow run %s could not be marked %s (%s); the next run against the store marks it KILLED",
                    run_id, status, str(exc).splitlines()[0][:200])  # fmt: skip
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)  # at least no run stays active in this process
        return False


def active() -> bool:
    return mlflow.active_run() is not None


def set_tags(tags: dict[str, str]) -> None:
    if active():
        retry(mlflow.set_tags, {k: redact(str(v)) for k, v in tags.items()})


def record_of(
    run: mlflow.ActiveRun, model_id: str | None = None, train_run_id: str | None = None,
    model_sha256: str | None = None,
) -> RunRecord:  # fmt: skip
    return RunRecord(run.info.run_id, run.info.experiment_id, model_id, train_run_id, model_sha256)


@contextlib.contextmanager
def evaluation_run(cfg: Config, trained: RunRecord) -> Iterator[mlflow.ActiveRun]:
    """The run an evaluation logs into: the training run while it holds no evaluation yet (one run per
    fresh pipeline execution), else a new run, child of the training run, so finished history stays as it was."""
    setup(cfg.tracking)
    client = mlflow.MlflowClient()
    try:
        train_run = retry(client.get_run, trained.run_id)
    except MlflowException as exc:
        raise DataError(
            f"MLflow run {trained.run_id} (from {cfg.paths.run_info}) is not in "
            f"{redact(tracking_uri(cfg.tracking))}: {exc.message}; rerun the train stage (dvc repro -f train)"
        ) from None
    if train_run.info.status == "FINISHED" and "test_accuracy" not in train_run.data.metrics:
        with start_run(cfg, run_id=trained.run_id) as run:
            yield run
        return
    tags = {"evaluates_run_id": trained.run_id, "evaluation": "re-evaluation"}
    if trained.model_id:
        tags["model_id"] = trained.model_id
    name = f"{train_run.info.run_name or trained.run_id[:8]}-eval"
    with start_run(cfg, parent_run_id=trained.run_id, tags=tags, run_name=name) as run:
        yield run
