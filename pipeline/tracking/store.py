"""Where the MLflow store is, and calls to it that survive a busy store or a server that is down.

Consumes: ``tracking`` config, ``$MLFLOW_TRACKING_URI`` (wins over the config) and ``$DVC_ROOT`` (set by DVC
inside the temporary copies of queued experiments). Produces: the store's URI, its experiment, and
:func:`retry`, which every MLflow call of the pipeline goes through.

A relative SQLite path (the default ``sqlite:///mlflow.db``) is taken from the project root, never the
current directory, so queued DVC experiments log to the project's store. A SQLite store keeps its artifacts
(``mlruns/``) and the records of its runs in progress (``<db>-running/``) beside the database file: another
``tracking.uri`` takes all three elsewhere. A server's run records live in the per-user cache. SQLite's
``database is locked`` is retried with backoff, and a retried call that creates something (a run, a logged
model) first looks for what the failed attempt may have created.

A tracking server's calls are retried by MLflow itself (HTTP 408, 429, 5xx, no answer, the connection refused),
within the bounds :data:`HTTP_BOUNDS` sets unless the environment already does (:func:`bound_http`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import mlflow

from pipeline.config import TrackingConfig
from pipeline.core.errors import DataError
from pipeline.core.files import exclusive_lock, user_cache_dir
from pipeline.core.redact import redact

T = TypeVar("T")
#: MLflow 3's UI opens an experiment in the view its kind names; without it, the GenAI view (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SERVER_SCHEMES = ("http", "https", "databricks")
#: Tag of a run or logged model naming the attempt that created it, so a retry can find it.
ATTEMPT_TAG = "pipeline.attempt"
#: A tracking server's calls, unless the environment sets these: MLflow's own defaults (120 s for each answer,
#: 7 retries with backoff up to 120 s) keep a stage waiting about 20 minutes a call on a server that hangs.
#: These wait 30 s for each answer and retry 4 times (backoff about 0, 4, 8 and 16 s): a server that hangs is
#: reported after about 3 minutes, one that fails for less than about 28 s (a restart) is survived.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4"}


def project_root() -> Path:
    """The nearest folder at or above the current one holding ``dvc.yaml``.

    Inside DVC's temporary copy of a queued experiment (``<root>/.dvc/tmp/...``) it is ``$DVC_ROOT``, the
    project the copy came from. A ``$DVC_ROOT`` left in the shell from another project changes nothing.
    """
    here = Path.cwd().resolve()
    nearest = next((f for f in (here, *here.parents) if (f / "dvc.yaml").is_file()), here)
    if os.environ.get("DVC_ROOT"):
        root = Path(os.environ["DVC_ROOT"]).resolve()
        if (root / "dvc.yaml").is_file() and (root / ".dvc" / "tmp") in nearest.parents:
            return root
    return nearest


def tracking_uri(tracking: TrackingConfig, root: Path | None = None) -> str:
    """The store: ``$MLFLOW_TRACKING_URI``, else ``tracking.uri`` with a relative SQLite path taken from
    ``root`` (default: the project root)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root or project_root()) / uri[len('sqlite:///') :]}"  # a relative SQLite path: the root's
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]) if uri.startswith("sqlite:///") else None


def is_server(uri: str) -> bool:
    """The store is a tracking server (each call a round trip), not a database file."""
    return urlsplit(uri).scheme in SERVER_SCHEMES


def artifact_location(uri: str) -> str | None:
    """A SQLite store's artifacts go to ``mlruns/`` beside its database; any other store decides itself."""
    db = _sqlite_path(uri)
    return (db.parent / "mlruns").as_uri() if db else None


def running_dir(uri: str) -> Path:
    """Folder of the records of this store's runs in progress: beside a SQLite database, else per user."""
    db = _sqlite_path(uri)
    if db:
        return db.with_name(db.name + "-running")
    digest = hashlib.sha256(redact(uri).encode()).hexdigest()[:16]
    return user_cache_dir() / "mlflow-running" / digest


def _is_locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def retry(fn: Callable[..., T], *args: Any, recover: Callable[[], T | None] | None = None, attempts: int = 12,
          **kwargs: Any) -> T:  # fmt: skip
    """Call an MLflow function, retrying SQLite's 'database is locked' with jittered backoff.

    ``recover``, for calls that create something: after a failed attempt it returns what that attempt
    created anyway (the commit may have succeeded before the error), so a retry never creates a second.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or sqlalchemy's OperationalError
            if not _is_locked(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))
            if recover is not None and (found := retry(recover)) is not None:
                return found
    raise AssertionError("unreachable")


@functools.cache  # once per server and process (setup runs for every run opened); a failure is not cached
def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """A tracking server that does not answer fails at once with a clear error, not after MLflow's retries
    (minutes). Its ``/health`` needs no login: a refused login is reported by the first real call."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answers; what it says about the real calls, MLflow reports
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it (make server), or point "
            "MLFLOW_TRACKING_URI / tracking.uri at a running one"
        ) from None


def bound_http(uri: str) -> None:
    """A tracking server's calls wait and retry within :data:`HTTP_BOUNDS`, where the environment does not say."""
    if is_server(uri):
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)


@contextlib.contextmanager
def one_attempt() -> Iterator[None]:
    """MLflow's HTTP calls in the block are tried once: while a server's failure unwinds, ending the run must
    not wait through all the retries again."""
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = before


def setup(tracking: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed."""
    uri = tracking_uri(tracking)
    check_reachable(uri)
    bound_http(uri)
    mlflow.set_tracking_uri(uri)
    # First use of a SQLite store creates its tables; two processes doing that at once fail
    # ('duplicate column name'), so first contact is serialised across processes.
    db = _sqlite_path(uri)
    with exclusive_lock(db.with_name(db.name + ".lock")) if db else contextlib.nullcontext():
        client = mlflow.MlflowClient()
        exp = retry(client.get_experiment_by_name, tracking.experiment)
        if exp is None:
            return retry(
                client.create_experiment,
                tracking.experiment,
                artifact_location=artifact_location(uri),
                tags=EXPERIMENT_KIND,
            )
        if not set(EXPERIMENT_KIND) & set(exp.tags):  # made before this setting, or elsewhere: never overridden
            for key, value in EXPERIMENT_KIND.items():
                retry(client.set_experiment_tag, exp.experiment_id, key, value)
        return exp.experiment_id


def create_run(client: mlflow.MlflowClient, experiment_id: str, run_name: str | None, tags: dict[str, str]) -> str:
    """Create a run exactly once, even when the store reports 'locked' after committing it."""
    attempt = uuid.uuid4().hex

    def recover() -> Any:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{ATTEMPT_TAG}` = '{attempt}'")
        return found[0] if found else None

    run = retry(
        client.create_run, experiment_id, run_name=run_name, tags={**tags, ATTEMPT_TAG: attempt}, recover=recover
    )
    return run.info.run_id
