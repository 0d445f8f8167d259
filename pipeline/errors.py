"""Errors a user can cause (bad config, bad data, missing files), and how a stage reports them.

A :class:`UserError` is a message for a person: the stage prints ``error: <message>`` (which names the
file or key and what is wrong) and exits with status 2, without a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A data or model file is missing, corrupt, or not what the config says."""


def run_cli(fn: Callable[[], object], fast_exit: bool = False) -> None:
    """Run a stage's body; a UserError prints one clear line and exits 2.

    ``fast_exit``: after success, end the process without interpreter teardown, which takes about 1 s
    once TensorFlow and MLflow are loaded. Safe only where every output is already closed and renamed
    into place and the MLflow run is ended, as in the train and evaluate stages.
    """
    try:
        fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if fast_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
