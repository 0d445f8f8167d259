"""MLflow tracking: where the store is, one run per pipeline execution, and its final status.

Consumes: ``tracking`` config, ``$MLFLOW_TRACKING_URI`` (wins over the config) and ``$DVC_ROOT`` (set by
DVC in a stage's environment, also inside the temporary copies of queued experiments). Produces: an
MLflow run holding every config value as a dotted param, tags (git commit, data hash, DVC experiment
name), metrics and artifacts.

The default store is ``sqlite:///<project root>/mlflow.db`` with artifacts in ``<project root>/mlruns``,
resolved against the project root, never the current directory, so runs of DVC's temporary experiment
copies land in the project's store. A run ends FINISHED on success, FAILED on an exception, and KILLED
on SIGINT or SIGTERM, keeping what was logged so far. SQLite's ``database is locked`` (several jobs
writing at once) is retried with backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.config import Config, DatasetConfig, TrackingConfig, flatten, to_dict
from pipeline.errors import DataError
from pipeline.files import exclusive_lock
from pipeline.redact import redact

T = TypeVar("T")
SERVER_SCHEMES = ("http", "https", "databricks")


class Terminated(BaseException):
    """SIGTERM arrived; unwinds like KeyboardInterrupt so the run is marked KILLED."""


def project_root() -> Path:
    """$DVC_ROOT when DVC runs us; else the nearest folder above the current one holding dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri(tracking: TrackingConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    root = project_root()
    if not uri:
        return f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri[len('sqlite:///'):]}"  # a relative SQLite path means the root's
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local store go to <root>/mlruns; a tracking server decides for itself."""
    if uri.split(":", 1)[0] in SERVER_SCHEMES:
        return None
    return (project_root() / "mlruns").as_uri()


def _is_locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def retry(fn: Callable[..., T], *args: Any, attempts: int = 12, **kwargs: Any) -> T:
    """Call an MLflow function, retrying SQLite's 'database is locked' with jittered backoff."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or sqlalchemy's OperationalError
            if not _is_locked(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def setup(tracking: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed."""
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    # First use of a SQLite store creates its tables; two processes doing that at once fail
    # ('duplicate column name'), so first contact is serialised across processes.
    lock = exclusive_lock(uri[len("sqlite:///") :] + ".lock") if uri.startswith("sqlite:///") else contextlib.nullcontext()
    with lock:
        client = mlflow.MlflowClient()
        exp = retry(client.get_experiment_by_name, tracking.experiment)
        if exp is not None:
            return exp.experiment_id
        return retry(client.create_experiment, tracking.experiment, artifact_location=artifact_location(uri))


def data_hash(dataset: DatasetConfig) -> str:
    """Content hash of the dataset: SHA-256 over the verified SHA-256s of its files."""
    joined = "".join(f"{k}:{dataset.files[k].sha256};" for k in sorted(dataset.files))
    return hashlib.sha256(joined.encode()).hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: Config, extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {"data_sha256": data_hash(cfg.dataset), "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name}
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


def redact_tree(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: redact_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_tree(v) for v in data]
    return redact(data) if isinstance(data, str) else data


def config_params(cfg: Config) -> dict[str, str]:
    """Every config value as a param with a dotted key (``optimizer.name``), secrets masked."""
    return {k: str(v) for k, v in flatten(redact_tree(to_dict(cfg))).items()}


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum, frame):
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


def _ledger(uri: str) -> Path:
    """Folder of pid files for this store's runs in progress (SIGKILL gives no chance to end a run)."""
    return project_root() / ".cache" / "mlflow-active" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(uri: str) -> list[str]:
    """Mark KILLED the runs whose process died without ending them (SIGKILL, power loss); return their ids."""
    reaped = []
    folder = _ledger(uri)
    for entry in folder.glob("*.pid") if folder.is_dir() else []:
        try:
            pid = int(entry.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        run_id = entry.stem
        with contextlib.suppress(MlflowException):
            client = mlflow.MlflowClient(uri)
            if retry(client.get_run, run_id).info.status == "RUNNING":
                retry(client.set_terminated, run_id, status="KILLED")
                reaped.append(run_id)
        entry.unlink(missing_ok=True)
    return reaped


def ledger_add(uri: str, run_id: str) -> None:
    """This process now owns ``run_id``: if it dies unannounced, reap_orphans ends the run KILLED."""
    entry = _ledger(uri) / f"{run_id}.pid"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(str(os.getpid()))


def ledger_remove(uri: str, run_id: str) -> None:
    (_ledger(uri) / f"{run_id}.pid").unlink(missing_ok=True)


@contextlib.contextmanager
def ledger_entry(uri: str, run_id: str) -> Iterator[None]:
    ledger_add(uri, run_id)
    try:
        yield
    finally:
        ledger_remove(uri, run_id)


@contextlib.contextmanager
def start_run(
    cfg: Config,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, reopen) a run; end it FINISHED, FAILED or KILLED as the block ends."""
    experiment_id = setup(cfg.tracking)
    reap_orphans(mlflow.get_tracking_uri())
    all_tags = run_tags(cfg, tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    try:
        run = retry(
            mlflow.start_run,
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else cfg.tracking.run_name,
            tags=all_tags,
        )
    except MlflowException as exc:
        if run_id:
            raise DataError(
                f"MLflow run {run_id} (from {cfg.paths.run_info}) cannot be reopened in "
                f"{redact(tracking_uri(cfg.tracking))}: {exc.message}; rerun the train stage"
            ) from None
        raise
    with _sigterm_raises(), ledger_entry(mlflow.get_tracking_uri(), run.info.run_id):
        try:
            if run_id is None:
                retry(mlflow.log_params, config_params(cfg))
            yield run
        except (KeyboardInterrupt, Terminated):
            retry(mlflow.end_run, status="KILLED")
            raise
        except BaseException:
            retry(mlflow.end_run, status="FAILED")
            raise
        else:
            retry(mlflow.end_run, status="FINISHED")


def active() -> bool:
    return mlflow.active_run() is not None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    if active():
        retry(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: Path | str, artifact_path: str | None = None) -> None:
    if active():
        retry(mlflow.log_artifact, str(path), artifact_path)


def set_tags(tags: dict[str, str]) -> None:
    if active():
        retry(mlflow.set_tags, {k: redact(str(v)) for k, v in tags.items()})
