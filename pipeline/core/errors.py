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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError`, or a tracking server's refusal (:func:`refusal`), raised in the block
    into :func:`fail`."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:
        message = refusal(exc)
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
