"""Errors a user can cause (bad config, bad data, missing files), and how every entry point reports them.

A :class:`UserError` is a message for a person: :func:`fail` prints ``error: <message>`` (which names the
file or key and what is wrong, secrets masked) and exits with status 2, without a traceback. Anything else
is a bug and keeps its traceback, except a tracking server's refusal of a login or a permission, which
is the user's to fix and is reported the same way. The DVC stages go through :func:`run_cli`; the Hydra app and its sweep
callback use :func:`user_errors` around their work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

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
    the likely cause and what to do; None for anything else."""
    texts = " | ".join(str(e) for e in _chain(exc)).lower()
    sqlish = any(type(e).__module__.split(".")[0] in ("sqlite3", "sqlalchemy", "mlflow") for e in _chain(exc))
    store = _store()
    folder = store[len("sqlite:///") :].rsplit("/", 1)[0] if store and store.startswith("sqlite:///") else None
    # A file-system error counts when it is about a file beside the store (its lock, its run records, mlruns/).
    beside = any(
        isinstance(e, OSError) and folder and str(getattr(e, "filename", "") or "").startswith(folder)
        for e in _chain(exc)
    )
    for needles, cause, todo in STORE_FAULTS:
        if any(n in texts for n in needles) and (sqlish or beside):
            return f"MLflow store {store or '(unknown)'}: {cause} ({_first_line(exc)}): {todo}"
    return None


def _store() -> str | None:
    mlflow = sys.modules.get("mlflow")
    uri = mlflow.get_tracking_uri() if mlflow else os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri) if uri else None


def _first_line(exc: BaseException) -> str:
    inner = next((e for e in _chain(exc) if type(e).__module__.split(".")[0] in ("sqlite3", "builtins")), exc)
    return f"{type(inner).__name__}: {str(inner).splitlines()[0][:160]}" if str(inner) else type(inner).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError`, a tracking server's refusal (:func:`refusal`) or a store that cannot work
    (:func:`store_fault`) raised in the block into :func:`fail`."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:
        message = refusal(exc) or store_fault(exc)
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
