"""Process start-up: TensorFlow imported without what Keras would import for nothing, and work forked beside."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.core.forking import forked
from pipeline.model.patches import hidden


def wait_for(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


@pytest.fixture
def no_tensorflow(monkeypatch):
    """The stage processes fork before TensorFlow loads; the test process may have loaded it already."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)


def child_work(marker: Path, release: Path) -> tuple[int, str]:
    written = marker.with_suffix(".part")
    written.write_text(str(os.getpid()))
    written.replace(marker)  # whole: the parent may read the marker the moment it exists
    wait_for(release)
    return os.getpid(), "scored"


def test_forked_runs_beside_the_block_and_returns_the_childs_value(tmp_path, no_tensorflow):
    marker, release = tmp_path / "started", tmp_path / "release"
    with forked(child_work, marker, release) as result:
        child_pid = int(wait_for(marker))  # the child works while the block runs...
        release.write_text("go")  # ...and waits for the block here, so it cannot have finished before it
        assert result() == (child_pid, "scored")
    assert child_pid != os.getpid()


def fail_with(exc: BaseException) -> None:
    raise exc


class Unpicklable(Exception):
    def __reduce__(self):
        raise pickle.PicklingError("not this one")


def test_forked_raises_the_childs_exception_in_the_parent(tmp_path, no_tensorflow, capfd):
    with forked(fail_with, DataError(f"{tmp_path}/model.keras: not a loadable Keras model")) as result:
        with pytest.raises(DataError, match=r"model.keras: not a loadable Keras model"):
            result()
    assert "Traceback" not in capfd.readouterr().err  # a user error is one line, printed once by the parent
    with forked(fail_with, Unpicklable("lost in transit")) as result:
        with pytest.raises(RuntimeError, match=r"^Unpicklable: lost in transit$"):
            result()
    assert "Traceback" in capfd.readouterr().err  # an unexpected one: the child printed where it happened


def test_a_child_that_dies_without_an_answer_is_an_error_with_its_exit_code(no_tensorflow):
    with forked(os._exit, 3) as result:
        with pytest.raises(RuntimeError, match=r"process died without an answer \(exit code 3\)"):
            result()


def test_a_failing_parent_terminates_the_child(tmp_path, no_tensorflow):
    marker, never = tmp_path / "started", tmp_path / "never"
    with pytest.raises(KeyError), forked(child_work, marker, never):
        child_pid = int(wait_for(marker))
        raise KeyError("the parent failed first (the MLflow store, say)")
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left waiting for a file forever
        os.kill(child_pid, 0)


def test_forked_runs_in_process_once_tensorflow_is_loaded(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", sys)  # any module: "already imported"
    with forked(os.getpid) as result:
        assert result() == os.getpid()


def test_hidden_modules_cannot_be_imported_inside_the_block_only(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    with hidden(("colorsys", "json")):
        with pytest.raises(ImportError):
            import colorsys
        import json  # already imported before the block: left alone

        assert json.dumps([1]) == "[1]"
    import colorsys

    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)


def test_tensorflow_imports_without_scikit_learn_or_pyplot_and_they_still_import_later():
    script = (
        "import sys\n"
        "from pipeline.model.patches import UNUSED_BY_KERAS\n"
        "from pipeline.model.runtime import import_tensorflow\n"
        "import_tensorflow()\n"
        "import keras\n"
        "assert keras.layers.Dense(3)(keras.ops.ones((2, 4))).shape == (2, 3)\n"
        "print(sorted(set(UNUSED_BY_KERAS) & set(sys.modules)))\n"
        "import matplotlib.pyplot, sklearn.metrics\n"
        "print(sklearn.metrics.accuracy_score([1, 2], [1, 3]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "0.5"]
