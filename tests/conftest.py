"""Shared fixtures: configs composed from conf/ with Hydra's compose API, every output under tmp_path.

Tiers: ``tests/unit`` runs on small synthetic arrays in-process (no MNIST, no MLflow store, no subprocess);
``tests/integration`` uses small subsets of the real MNIST, real MLflow stores under ``tmp_path``, real DVC;
tests marked ``slow`` use the full data.

The real MNIST comes through the pipeline's own verified download (:func:`pipeline.data.prepare.ensure_data`):
from ``$DATA_MIRROR`` when set, else the public mirrors, into the per-user cache, so a machine downloads
it at most once. With neither reachable, the tests that need it are skipped, with one line saying how to
point ``DATA_MIRROR`` at a folder.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import JOB_OUTPUTS, Config, compose, validate
from pipeline.core.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def _absl_logs_to_the_real_stderr() -> None:
    """TensorFlow's absl log handler closes its stream when logging is reconfigured (Hydra does, at every
    in-process run) unless that stream is the current sys.stderr: pointed at pytest's capture, it would close
    pytest's capture file. The real stderr is never closed."""
    try:
        import absl.logging
    except ImportError:
        return
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_logs_to_the_real_stderr()


def _one_tensorflow_thread_per_worker() -> None:
    """Under pytest-xdist with several workers (``make test``: two on two cores), each TensorFlow process (this
    worker, and every stage it starts, which inherit the environment) runs one intra-op and one inter-op thread
    instead of one per core each: the workers already keep the cores busy, and pools of both sizes contending
    for them cost time (docs/testing.md). Numbers stay within every test's tolerance; a test comparing two
    trainings runs both under one setting."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


_one_tensorflow_thread_per_worker()
#: The config's paths a test redirects into its tmp_path: every output (the rest are the session's data).
OUTPUT_PATHS = JOB_OUTPUTS


def data_cache() -> Path:
    from pipeline.core.files import user_cache_dir

    return user_cache_dir() / "data"


@pytest.fixture(scope="session")
def mnist():
    """MNIST prepared once per machine (verified download, preprocess) in the per-user cache."""
    from pipeline.core.errors import DataError
    from pipeline.data.prepare import ensure_data

    dataset = validate(compose()).dataset
    if not os.environ.get("DATA_MIRROR"):  # public mirrors: fail fast when there is no network
        dataset = dataclasses.replace(dataset, timeout=10.0, retries=1)
    try:
        return ensure_data(dataset, data_cache())
    except DataError:
        pytest.skip("MNIST not reachable: set DATA_MIRROR to a folder holding the four MNIST .gz files")


#: The integration tier's small real subsets: the first images of each split, as datasets of their own.
SMALL_SPLITS = {"train": 2000, "test": 1000}
FASHION_MIRROR = Path("/usr/share/datasets/fashion-mnist")


def small_dataset(name: str, source: Path, dest: Path):
    """Write the first SMALL_SPLITS images of each split of the IDX files in ``source`` (compressed or not) as
    gzipped IDX files in ``dest`` (a mirror folder); return the dataset config naming them, with hashes."""
    import gzip
    import hashlib
    import struct

    from pipeline.config import FileSpec

    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, spec in validate(compose()).dataset.files.items():
        raw = source / spec.file[:-3]
        data = raw.read_bytes() if raw.is_file() else gzip.decompress((source / spec.file).read_bytes())
        ndim = data[3]
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        n = SMALL_SPLITS[key.split("_")[0]]
        item = math.prod(dims[1:])
        content = data[:4] + struct.pack(f">{ndim}I", n, *dims[1:]) + data[4 + 4 * ndim :][: n * item]
        with atomic_path(dest / spec.file) as tmp:  # another test process may be reading it (pytest -n)
            tmp.write_bytes(gzip.compress(content, mtime=0))
        files[key] = FileSpec(spec.file, hashlib.sha256(content).hexdigest(), len(content))
    base = validate(compose()).dataset  # MNIST's: an IDX dataset of 28x28 digits
    return dataclasses.replace(base, name=name, mirrors=[str(dest)], files=files, timeout=10.0, retries=1)


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """The first 2,000 training and 1,000 test images of MNIST as a dataset of their own, prepared."""
    from pipeline.data.prepare import ensure_data

    dataset = small_dataset("mnist_small", mnist.raw_dir, data_cache() / "mirrors" / "mnist_small")
    return dataset, ensure_data(dataset, data_cache(), env={})


@pytest.fixture(scope="session")
def fashion_small():
    """The same subset of Fashion-MNIST (Debian's package), or None where it is not installed."""
    if not FASHION_MIRROR.is_dir():
        return None
    return small_dataset("fashion_small", FASHION_MIRROR, data_cache() / "mirrors" / "fashion_small")


@pytest.fixture(scope="session")
def mirror(mnist) -> Path:
    """A local mirror for subprocess stages: the verified, decompressed IDX files (no download at all)."""
    return mnist.raw_dir


@pytest.fixture(scope="session", autouse=True)
def _project_store_untouched() -> Iterator[None]:
    """No test writes the project's own outputs, MLflow store, its artifacts or its run records: every test's
    outputs and runs go under tmp_path, and a store's files stay beside it."""

    def state() -> dict[str, tuple[int, int]]:
        names = (
            "mlflow.db",
            "mlruns",
            "mlflow.db-running",
            "outputs",
            "multirun",
            "data",
            "models",
            "reports",
            ".cache",
        )
        paths = [p for name in names for p in [ROOT / name, *(ROOT / name).rglob("*")] if p.exists()]
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in paths}

    before = state()
    yield
    assert state() == before, "a test wrote into the project's own outputs, MLflow store or Hydra folders"


@pytest.fixture(autouse=True)
def _isolated_process_state(monkeypatch) -> Iterator[None]:
    """No test sees a tracking server, a DVC stage or an externalized secret from the shell; what an
    entry point run in-process changes for the whole process (the environment, the redacting stdout and
    stderr, Hydra's logging handlers) is undone after the test."""
    import logging

    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "DVC_", "PIPELINE_SECRET_")):
            monkeypatch.delenv(name)
    environ = dict(os.environ)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    streams = sys.stdout, sys.stderr
    yield
    sys.stdout, sys.stderr = streams
    for handler in set(root.handlers) - set(handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    os.environ.clear()
    os.environ.update(environ)


def config_in(tmp_path: Path, *overrides: str) -> Config:
    """conf/ composed with overrides, every output, the backups and the MLflow store under ``tmp_path``."""
    # registry.export: [] as the default here: a test that promotes a model (most do) skips the 5-15 s of
    # TF-Lite and ONNX files unless it is about them (tests/integration/test_export.py turns them on).
    cfg = validate(compose(["train.subset=512", "train.verbose=silent", "registry.export=[]", *overrides]))
    p = cfg.paths
    for key in OUTPUT_PATHS:
        setattr(p, key, str(tmp_path / "out" / Path(getattr(p, key)).name))
    p.backup_dir = str(tmp_path / "backup")
    cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return cfg


@functools.cache
def _empty_store() -> Path:
    """An MLflow SQLite store with nothing in it but its tables, made once per test process: a new store runs
    MLflow's schema migrations, about 1.5 s of CPU, and most integration tests start from a new one."""
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


def new_store(path: Path) -> str:
    """The URI of a SQLite store at ``path``: a copy of :func:`_empty_store` unless one is there already (a test
    composing two configs in one folder shares their store)."""
    if not path.exists():
        shutil.copyfile(_empty_store(), path)
    return f"sqlite:///{path}"


@pytest.fixture
def make_config(tmp_path) -> Callable[..., Config]:
    """A config and nothing else (no data: tests that need only a config never touch MNIST)."""
    return lambda *overrides: config_in(tmp_path, *overrides)


@pytest.fixture
def make_cfg(tmp_path, mnist_small) -> Callable[..., Config]:
    """:func:`config_in` on the small real subset of MNIST, prepared, and its store made (:func:`new_store`): for
    tests that train or evaluate."""
    dataset, prepared = mnist_small

    def make(*overrides: str) -> Config:
        cfg = config_in(tmp_path, *overrides)
        cfg.tracking.uri = new_store(tmp_path / "mlflow.db")
        cfg.dataset = dataclasses.replace(dataset)
        p = cfg.paths
        p.raw_dir, p.processed_dir, p.data_cache = str(prepared.raw_dir), str(prepared.processed_dir), str(data_cache())
        return cfg

    return make


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the project's tracked files in a fresh git repo, as a clone would have them."""
    return copy_repo(tmp_path / "repo")


def copy_repo(dest: Path, *, exports: bool = False, store: bool = False) -> Path:
    """The project's tracked files in a fresh git repo at ``dest``, as a clone has them; unless ``exports``, with
    ``registry.export: []`` in conf/ and params.yaml alike (as :func:`config_in` composes it), so a promotion in a
    test not about them skips the TF-Lite and ONNX files (about 5 s of a stage process each); with ``store``, its
    default store (``mlflow.db``) already made (:func:`new_store`), for a scenario that does not test a new one."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if not exports:
        for name, listed in (
            ("conf/config.yaml", "export: [tflite, onnx]"),
            ("params.yaml", "export:\n  - tflite\n  - onnx"),
        ):
            text = (dest / name).read_text()
            assert listed in text, f"{name}: registry.export is no longer {listed!r}"
            (dest / name).write_text(text.replace(listed, "export: []", 1))
    if store:
        new_store(dest / "mlflow.db")  # ignored by git, as a user's is
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def stage_env(mirror: Path, **extra: str) -> dict[str, str]:
    """Environment for subprocess stages: this interpreter's bin first on PATH, as `make` sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PIPELINE_SECRET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DATA_MIRROR"] = str(mirror)
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env
