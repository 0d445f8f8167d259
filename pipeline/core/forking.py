"""Run a function in a forked child process while the caller goes on.

Consumes: a picklable function and its arguments. Produces: its return value (or its exception) in the
caller. The evaluate stage scores the model (TensorFlow's import and the forward pass) in a child while the
parent imports MLflow and opens the run. Importing is single-threaded, so on two cores the two imports overlap
instead of adding up; threads would not do (both imports hold the interpreter lock, measured slower than one
after the other).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _child(writer: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        outcome: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # handed to the parent, which raises it: nothing is swallowed
        from pipeline.core.errors import UserError

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
