"""Errors a user can cause (bad config, bad data, missing files), and how every entry point reports them.

A :class:`UserError` is a message for a person: :func:`fail` prints ``error: <message>`` (which names the
file or key and what is wrong, secrets masked) and exits with status 2, without a traceback. Anything else
is a bug and keeps its traceback, except what the machine or a service did, which is the user's to fix and is
reported the same way: a tracking server's refusal of a login or a permission (:func:`refusal`), a store or
artifact location that is read-only, damaged, full or locked (:func:`store_fault`), a tracking server that
stopped answering or answers errors mid-run after MLflow's retries (:func:`server_fault`), and a file the
file system would not take (:func:`file_fault`: disk full, read-only). The DVC stages go through
:func:`run_cli`; the Hydra app and its sweep callback use :func:`user_errors` around their work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from pipeline.core import redact


class UserError(Exception):
    """Something the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A data or model file is missing, corrupt, or not what the config says."""


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` (redacted) on stderr and exit with status 2."""
    print(f"error: {redact.redact(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def refusal(exc: BaseException) -> str | None:
    """An MLflow tracking server's refusal (HTTP 401, 403) as a message for a person; None for anything else.

    Without credentials, or with wrong ones, MLflow raises its HTTP error with the server's page inside:
    the person needs to know which server refused which user, and which variables to fix.
    """
    if not type(exc).__module__.startswith("mlflow"):
        return None
    text = f"{getattr(exc, 'error_code', '')} {exc}"  # a REST error's code, or the HTTP status in the message
    code = re.search(r"error code (40[13])\b", text) or re.search(r"\b(PERMISSION_DENIED|UNAUTHENTICATED)\b", text)
    if not code:
        return None
    mlflow = sys.modules.get("mlflow")
    server = mlflow.get_tracking_uri() if mlflow else os.environ.get("MLFLOW_TRACKING_URI", "the tracking server")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    endpoint = re.search(r"endpoint (\S+)", text)
    what = f" ({endpoint.group(1)})" if endpoint else ""
    if code.group(1) in ("401", "UNAUTHENTICATED"):
        who = (
            f"user '{user}' with the password in MLFLOW_TRACKING_PASSWORD"
            if user and os.environ.get("MLFLOW_TRACKING_PASSWORD")
            else "no MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are set"
        )
        return (
            f"MLflow server {server} refused the login (HTTP 401){what}: {who}. Set both to your account on "
            "that server (README: Working as a team)"
        )
    return (
        f"MLflow server {server}: user '{user}' is not allowed to do this (HTTP 403){what}. Ask the server's "
        "admin for EDIT permission on the experiment or registered model"
    )


#: What SQLite, SQLAlchemy and the file system say when the store cannot do its work, and what it means.
STORE_FAULTS = (
    (("readonly database", "read-only file system", "permission denied"), "read-only",
     "make it writable, or point tracking.uri (or MLFLOW_TRACKING_URI) at a writable store"),
    (("file is not a database", "database disk image is malformed", "malformed"), "damaged",
     "move it aside (a new, empty store is then created) or restore it from a backup"),
    (("no space left on device", "database or disk is full", "disk i/o error"), "full",
     "free disk space where it lies, or point tracking.uri at a store with room"),
    (("database is locked",), "locked",
     "another process holds it for longer than the pipeline waits: let it finish, or use a tracking server"),
)  # fmt: skip


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def store_fault(exc: BaseException) -> str | None:
    """The MLflow store's failure (a SQLite file read-only, damaged, full or locked) as one line naming the store,
    the likely cause and what to do; None for anything else. A file-system error on a file in ``mlruns/`` beside
    the store names the artifact location instead."""
    texts = " | ".join(str(e) for e in _chain(exc)).lower()
    sqlish = any(type(e).__module__.split(".")[0] in ("sqlite3", "sqlalchemy", "mlflow") for e in _chain(exc))
    store = _store()
    db = store[len("sqlite:///") :].split("?", 1)[0] if store and store.startswith("sqlite:///") else None
    artifacts = f"{db.rsplit('/', 1)[0]}/mlruns" if db else None
    # A file-system error counts when it is about one of the store's files (the database and its journal, its
    # lock, its run records, mlruns/ beside it): the file it could not write is the destination (filename2) of a
    # copy, else its one file name.
    paths = [p for e in _chain(exc) if isinstance(e, OSError) and (p := _written(e))]
    in_artifacts = any(artifacts and (p == artifacts or p.startswith(artifacts + "/")) for p in paths)
    beside = in_artifacts or any(db and p.startswith(db) for p in paths)
    if paths and not beside:
        return None  # a file elsewhere (a temporary folder, an output): file_fault names it
    what = f"MLflow artifact location {artifacts}" if in_artifacts else f"MLflow store {store or '(unknown)'}"
    for needles, cause, todo in STORE_FAULTS:
        if any(n in texts for n in needles) and (sqlish or beside):
            return f"{what}: {cause} ({_first_line(exc)}): {todo}"
    return None


def _written(exc: OSError) -> str | None:
    name = exc.filename2 or exc.filename
    return os.fsdecode(name) if isinstance(name, str | bytes) else None


#: What the file system says when it cannot take a write, as the cause to name and what to do.
FILE_FAULTS = {
    errno.ENOSPC: ("disk full", "free space there (or point the paths in params.yaml elsewhere), then rerun"),
    errno.EDQUOT: ("disk full (over quota)", "free space within your quota there, then rerun"),
    errno.EROFS: ("read-only file system", "make it writable (or point the paths in params.yaml elsewhere)"),
}


def file_fault(exc: BaseException) -> str | None:
    """A write the file system refused (disk full, over quota, read-only) as one line naming the file and the
    space left where it lies; None for anything else, or when no file is named (see :func:`naming`)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FILE_FAULTS and (path := _written(e)):
            cause, todo = FILE_FAULTS[e.errno]
            return f"{path}: {cause} ({e.strerror}{_free_near(path)}): {todo}"
    return None


def _free_near(path: str) -> str:
    """``; 12.0 KiB free there``: the free space of the file system ``path`` (or its nearest folder) is on."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    size = next((f"{free / 2**p:.1f} {unit}" for p, unit in ((30, "GiB"), (20, "MiB")) if free >= 2**p), "")
    return f"; {size or f'{free / 1024:.1f} KiB'} free there"


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """An OSError raised in the block without a file name gets ``path`` as its file: writes through a file object
    (Keras' model saving, zipfile) say 'No space left on device' and not where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def server_fault(exc: BaseException) -> str | None:
    """A tracking server that failed a call after MLflow's own retries (no answer in time, HTTP 5xx, the
    connection refused mid-run) as one line naming the server, what it did and what to do; None otherwise."""
    if not type(exc).__module__.startswith("mlflow"):
        return None
    text = str(exc)
    url = re.match(r"API request to (\S+) failed with (?:timeout )?exception", text)
    if not url:
        return None
    parts = urlsplit(url.group(1))
    server, endpoint = f"{parts.scheme}://{parts.netloc}", parts.path
    status = re.search(r"too many (\d{3}) error responses", text)
    tries = 1 + int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 7)  # MLflow's default: 7 retries
    if status:
        cause = f"answered HTTP {status.group(1)} to {endpoint}, {tries} times"
    elif re.search(r"timed out|timeout", text, re.I):
        wait = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or "120"
        cause = f"did not answer {endpoint} within {wait} s, {tries} times"
    elif re.search(r"Connection refused|Failed to establish|RemoteDisconnected|Connection aborted", text):
        cause = f"stopped answering (connection refused or dropped on {endpoint}, {tries} times)"
    else:
        cause = f"failed {endpoint} ({text.splitlines()[0][:160]})"
    return (
        f"MLflow tracking server {server} {cause}: check it and its log (python -m pipeline.server status), then "
        "rerun; a run it could not mark FAILED is marked KILLED by the next run"
    )


def _store() -> str | None:
    mlflow = sys.modules.get("mlflow")
    uri = mlflow.get_tracking_uri() if mlflow else os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri) if uri else None


def _first_line(exc: BaseException) -> str:
    inner = next((e for e in _chain(exc) if type(e).__module__.split(".")[0] in ("sqlite3", "builtins")), exc)
    if isinstance(inner, OSError) and inner.strerror and (path := _written(inner)):
        return f"{type(inner).__name__}: [Errno {inner.errno}] {inner.strerror}: '{path}'"  # the file not written
    return f"{type(inner).__name__}: {str(inner).splitlines()[0][:160]}" if str(inner) else type(inner).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError`, a tracking server's refusal (:func:`refusal`), a store that cannot work
    (:func:`store_fault`), a server that stopped working (:func:`server_fault`) or a write the file system
    refused (:func:`file_fault`) raised in the block into :func:`fail`."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:
        message = refusal(exc) or store_fault(exc) or server_fault(exc) or file_fault(exc)
        if message is None:
            raise
        fail(message)


def run_cli(fn: Callable[[], object], fast_exit: bool = False) -> None:
    """A DVC stage's entry point: redaction on, then ``fn``; a UserError prints one clear line and exits 2.

    ``fast_exit``: after success, end the process without interpreter teardown, which takes about 1 s
    once TensorFlow and MLflow are loaded. Safe only where every output is already closed and renamed
    into place and the MLflow run is ended, as in the train and evaluate stages.
    """
    redact.install()
    with user_errors():
        fn()
    if fast_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
