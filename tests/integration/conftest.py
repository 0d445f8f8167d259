"""Fixtures of the integration tier: the Hydra app in-process on the small MNIST subset, and its store."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.config import plain
from tests.conftest import data_cache


@pytest.fixture(scope="session")
def small_conf(tmp_path_factory, mnist_small) -> Path:
    """A config folder holding ``dataset/mnist_small.yaml`` (the small real subset), for Hydra's search path."""
    dataset, _ = mnist_small
    conf = tmp_path_factory.mktemp("conf")
    (conf / "dataset").mkdir()
    (conf / "dataset" / "mnist_small.yaml").write_text(yaml.safe_dump(plain(dataset)))
    return conf


@pytest.fixture
def app(repo_copy, mirror, small_conf, monkeypatch, capfd):
    """``app(*args)`` runs ``python -m pipeline.run ARGS dataset=mnist_small`` in this process inside the repo
    copy (the small dataset's config found through Hydra's search path) and returns (exit status, everything
    printed)."""
    import pipeline.run.app

    share_prepared_data(repo_copy)
    monkeypatch.chdir(repo_copy)
    monkeypatch.setenv("DATA_MIRROR", str(mirror))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)

    def run(*args: str) -> tuple[int, str]:
        drop_closed_handlers()
        small = (f"hydra.searchpath=[file://{small_conf}]", "dataset=mnist_small")
        monkeypatch.setattr(sys, "argv", ["pipeline.run", *args, *small])
        try:
            pipeline.run.app.main()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        out = capfd.readouterr()
        return status, out.out + out.err

    return run


def drop_closed_handlers() -> None:
    """Logging handlers an earlier in-process test left bound to its own captured output, closed since: one would
    print logging's "--- Logging error ---" traceback into this test's output (a process of its own has none)."""
    import logging

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)


def share_prepared_data(repo: Path) -> None:
    """The copy's data cache (``paths.data_cache``) is the session's: nothing is prepared again."""
    (repo / ".cache").mkdir(exist_ok=True)
    (repo / ".cache" / "data").symlink_to(data_cache(), target_is_directory=True)


def store(repo: Path) -> tuple[mlflow.MlflowClient, list]:
    """The copy's default MLflow store (sqlite:///<root>/mlflow.db) and all its runs."""
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-cnn")
    assert exp is not None, "no MLflow experiment was created"
    return client, client.search_runs([exp.experiment_id], max_results=1000)
