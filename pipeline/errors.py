"""Errors a user can cause (bad config, bad data, missing files), and how every entry point reports them.

A :class:`UserError` is a message for a person: :func:`fail` prints ``error: <message>`` (which names the
file or key and what is wrong, secrets masked) and exits with status 2, without a traceback. Anything else
is a bug and keeps its traceback. The DVC stages go through :func:`run_cli`; the Hydra app and its sweep
callback use :func:`user_errors` around their work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from pipeline import redact


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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError` raised in the block into :func:`fail`."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))


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
