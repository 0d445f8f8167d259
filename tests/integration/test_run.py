"""`python -m pipeline.run`: single runs, bad command lines, multiruns with an MLflow parent, Optuna, and an
interrupted sweep.

The app runs in-process (its real `main()`, Hydra and all) from inside a fresh copy of the repository, so
Hydra's outputs/ and multirun/ folders and the MLflow store are the copy's; only the SIGTERM test needs a
process of its own. Jobs read the session's prepared MNIST (``paths.data_cache``).
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.tracking.sweeps import PARENT_RUN_FILE
from tests.conftest import data_cache, stage_env
from tests.integration.conftest import share_prepared_data, store

SMALL = ("train.subset=300", "train.verbose=silent")


def logged_models(client: mlflow.MlflowClient, run) -> list:
    return client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )


def split_parent(runs: list) -> tuple:
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def printed_table(output: str) -> list[list[str]]:
    """Rows of the sweep's Markdown table: [overrides, test_accuracy, ...]."""
    rows = [line for line in output.splitlines() if line.startswith("| ") and "overrides" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


def written_files(repo: Path) -> list[Path]:
    """Every file the project wrote in a repo copy: each one git does not track, or tracks with changes
    (the store, mlruns/, outputs/, multirun/, logs, caches, dvc.lock...)."""
    git = functools.partial(subprocess.run, cwd=repo, capture_output=True, text=True, check=True)
    unchanged = set(git(["git", "ls-files"]).stdout.split()) - set(git(["git", "diff", "--name-only"]).stdout.split())
    files = [p for p in sorted(repo.rglob("*")) if p.is_file() and ".git" not in p.relative_to(repo).parts]
    return [p for p in files if str(p.relative_to(repo)) not in unchanged]


def assert_nowhere(secrets: dict[str, str], files: list[Path], printed: str) -> None:
    """No secret in any of ``files`` (read as bytes, binary stores included) nor in ``printed``."""
    for path in files:
        data = path.read_bytes()
        for name, secret in secrets.items():
            assert secret.encode() not in data, f"{name} secret in {path}"
    for name, secret in secrets.items():
        assert secret not in printed, f"{name} secret printed"


# --------------------------------------------------------------------------- errors


def test_bad_command_lines_exit_2_before_any_work(app, repo_copy):
    status, out = app("optimizer.lr=0.01")
    assert status == 2, out
    assert (
        "error: overrides: unknown key 'optimizer.lr' (not a field of 'optimizer'); did you mean 'optimizer.learning_rate'?"
        in out
    )
    assert "+optimizer.lr" not in out and "Traceback" not in out  # not Hydra's advice to append the key

    status, out = app("optimizer=adamw")
    assert status == 2 and "allowed: adam, rmsprop, sgd; did you mean 'adam'?" in out

    status, out = app("train.batch_size=0")
    assert status == 2 and "error: overrides: bad value for 'train.batch_size': 0; allowed: an integer >= 1" in out

    # In a multirun every job is validated before any runs: the bad one is named, nothing is started.
    status, out = app("-m", "train.batch_size=0,32", *SMALL)
    assert status == 2, out
    assert "1 job(s) of the sweep have bad config; nothing was run" in out
    assert "job (train.batch_size=0 " in out and "'train.batch_size': 0" in out and "Traceback" not in out
    for leftover in ("outputs", "multirun", "mlflow.db", "mlruns"):
        assert not (repo_copy / leftover).exists(), leftover  # a refused run leaves nothing behind


# --------------------------------------------------------------------------- runs


def test_single_run_logs_one_finished_run_and_no_secret_anywhere(app, repo_copy, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-secret-2468")
    mirror_override = "dataset.mirrors=[http://bob:cli-secret-1357@127.0.0.1:9/]"
    status, out = app("optimizer=sgd", *SMALL, mirror_override)
    assert status == 0, out

    client, runs = store(repo_copy)
    assert len(runs) == 1, "a single run creates no parent run"
    run = runs[0]
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in tags
    assert (
        tags["overrides"]
        == "optimizer=sgd train.subset=300 train.verbose=silent dataset.mirrors=[http://***@127.0.0.1:9/] dataset=mnist_small"
    )
    assert params["optimizer.name"] == "sgd" and params["train.subset"] == "300"
    assert params["paths.model"] == "models/model.keras"  # params: the config as dvc exp run -S reproduces it
    assert params["dataset.mirrors"] == "['http://***@127.0.0.1:9/']"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["objective"] == metrics["test_accuracy"]
    assert len(logged_models(client, run)) == 1

    out_dir = Path(tags["hydra_output_dir"])
    assert out_dir.parent.parent == repo_copy / "outputs"
    saved = json.loads((out_dir / "reports" / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (out_dir / "models" / "model.keras").is_file()
    assert json.loads((out_dir / "models" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    hydra_overrides = yaml.safe_load((out_dir / ".hydra" / "overrides.yaml").read_text())
    assert hydra_overrides[:3] == ["optimizer=sgd", *SMALL] and "***@127.0.0.1" in hydra_overrides[3]
    assert {p.name for p in (out_dir / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/config.yaml"))
    assert logged["train"]["subset"] == 300 and "hydra" not in logged
    assert tags["data_dir"].startswith(str(data_cache())) and len(tags["data_digest"]) == 64
    assert not (repo_copy / "data" / "processed").exists(), "the app wrote DVC's outputs"
    assert "test_accuracy" in out  # the job's log line

    assert_nowhere({"cli": "cli-secret-1357", "env": "env-secret-2468"}, written_files(repo_copy), out)


def test_multirun_over_optimizers_makes_parent_children_and_sorted_table(app, repo_copy):
    status, out = app("-m", "optimizer=sgd,adam", *SMALL)
    assert status == 0, out

    client, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep-") and parent.info.run_name.endswith("-optimizer")
    assert "optimizer=sgd,adam" in parent.data.tags["sweep_overrides"]
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"] == parent.info.run_id
    assert {c.data.tags["optimizer"] for c in children} == {"sgd", "adam"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert "test_accuracy" in child.data.metrics and "train_time_s" in child.data.metrics
        assert child.data.tags["overrides"].startswith("optimizer=")
        assert Path(child.data.tags["hydra_output_dir"]).parent == sweep_dir
        assert len(logged_models(client, child)) == 1
    assert parent.data.metrics["child_runs"] == 2
    assert parent.data.metrics["best_test_accuracy"] == max(c.data.metrics["test_accuracy"] for c in children)

    table = printed_table(out)
    assert [row[0] for row in table] == [
        c.data.tags["overrides"] for c in sorted(children, key=lambda c: -c.data.metrics["test_accuracy"])
    ]
    accuracies = [float(row[1]) for row in table]
    assert accuracies == sorted(accuracies, reverse=True)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_results.md", "sweep_results.csv", "sweep_results.json"} <= artifacts
    assert "p_vs_best" in out  # McNemar's p of each job against the best, on the same test images
    assert table[0][-3] == "-" and 0.0 <= float(table[1][-3]) <= 1.0


def test_optuna_learning_rate_search_maximises_validation_accuracy(app, repo_copy):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    status, out = app("-m", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=1", *SMALL)
    assert status == 0, out

    _, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert parent.info.status == "FINISHED" and len(children) == 1
    for child in children:
        assert 1e-4 <= float(child.data.params["optimizer.learning_rate"]) <= 1e-2
        assert float(child.data.params["train.validation_split"]) == 0.1
        assert child.data.metrics["objective"] == child.data.metrics["val_accuracy"]  # the tuner never sees test
    results = yaml.safe_load((Path(parent.data.tags["sweep_dir"]) / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(c.data.metrics["val_accuracy"] for c in children))
    assert "val_accuracy" in out


def test_interrupted_sweep_leaves_no_run_running(repo_copy, mirror, small_conf, tmp_path):
    share_prepared_data(repo_copy)
    shutil.copy(small_conf / "dataset" / "mnist_small.yaml", repo_copy / "conf" / "dataset")
    args = ("-m", "optimizer=sgd,adam", "dataset=mnist_small", "train.epochs=3", "train.verbose=silent")
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", *args], cwd=repo_copy, env=stage_env(mirror), stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 120
            # The first job's run is open once its record exists; its epoch is then under way.
            while not list(repo_copy.glob("multirun/*/*/0/models/mlflow_run.json")):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) != 0
        finally:
            proc.kill()
    _, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert [c.info.status for c in children] == ["KILLED"]
    assert parent.info.status == "KILLED", (tmp_path / "log").read_text()[-3000:]
