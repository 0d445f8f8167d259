"""TensorFlow, imported once per process with each of its start-up notices printed once, and without the
optional packages Keras would import for features the pipeline does not use.

TensorFlow's C++ library writes its oneDNN banner twice on import, before absl logging is set up, straight
to file descriptor 2 (``TF_CPP_MIN_LOG_LEVEL`` cannot silence it). :func:`import_tensorflow` captures that
descriptor during the import and writes each distinct notice once. The stages call it before Keras.

``import tensorflow`` imports Keras 3, and Keras imports scikit-learn (for ``keras.wrappers``' scikit-learn
estimators; it pulls in SciPy) and ``matplotlib.pyplot`` (for ``keras.visualization``'s image gallery) when
they are installed, as they are here: MLflow depends on both. That is 0.8-0.9 s of every stage's TensorFlow
import (``python -X importtime``) for two features the pipeline never calls. :func:`import_tensorflow` hides
the two (:data:`UNUSED_BY_KERAS`) for the length of the import, so Keras takes the same branch it takes
where they are not installed; afterwards they import normally for whoever needs them (the figures are drawn
with ``matplotlib.figure``). In such a process, ``keras.wrappers.SKLearnClassifier`` and friends say that
scikit-learn is not installed.

:func:`forked` runs a function in a forked child process while the caller goes on: the evaluate stage scores
the model (TensorFlow's import and the forward pass) in a child while the parent imports MLflow and opens the
run. Importing is single-threaded, so on two cores the two imports overlap instead of adding up; threads
would not do (both imports hold the interpreter lock, measured slower than one after the other).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")  # absl's "I0000 00:00:1796.08 4901 " (time, thread)
#: Modules Keras imports if it can, for features the pipeline does not use (see the module docstring).
UNUSED_BY_KERAS = ("sklearn", "matplotlib.pyplot")


@contextlib.contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """``import <name>`` raises ImportError inside the block, for each name not imported yet."""
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


def import_tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            with hidden(UNUSED_BY_KERAS):
                import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", errors="replace").splitlines()
    seen = set()
    for line in lines:
        key = _PREFIX.sub("", line)
        if key and key not in seen:
            seen.add(key)
            print(line, file=sys.stderr)
    return tensorflow


def _child(writer: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        outcome: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # handed to the parent, which raises it: nothing is swallowed
        from pipeline.errors import UserError

        if not isinstance(exc, UserError | KeyboardInterrupt):
            traceback.print_exc()  # where it happened, which the parent cannot show
        outcome = (False, exc)
    try:
        writer.send(outcome)
    except OSError:
        pass  # the parent is gone (killed): nobody to answer
    except Exception as exc:  # an unpicklable result or exception: its type and message still reach the parent
        failed = outcome[1] if not outcome[0] else exc
        with contextlib.suppress(OSError):
            writer.send((False, RuntimeError(f"{type(failed).__name__}: {failed}")))
    writer.close()


@contextlib.contextmanager
def forked(fn: Callable[..., T], *args: Any) -> Iterator[Callable[[], T]]:
    """Start ``fn(*args)`` in a forked child now; the block gets a function that waits for its return value
    (or raises its exception in this process). A child still running when the block ends (the parent
    failed first) is terminated; a child that died without an answer raises RuntimeError with its exit code.

    The child is a copy of the parent at this point, including the logging set-up, and writes to the same
    stdout and stderr. In a process that has already imported TensorFlow (a test, a Hydra job), whose thread
    pools a fork would not copy, ``fn`` runs in this process instead, when its result is asked for.
    """
    if "tensorflow" in sys.modules:  # its thread pools would not survive a fork: run here, when asked
        yield lambda: fn(*args)
        return
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    sys.stdout.flush()  # else the child inherits, and later prints, a copy of what is still buffered
    sys.stderr.flush()
    child = context.Process(target=_child, args=(writer, fn, args), name=getattr(fn, "__name__", "child"))
    child.start()
    writer.close()

    def result() -> T:
        try:
            ok, value = reader.recv()
        except EOFError:
            child.join()
            raise RuntimeError(
                f"the {child.name} process died without an answer (exit code {child.exitcode})"
            ) from None
        child.join()
        if ok:
            return value
        raise value

    try:
        yield result
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        reader.close()
