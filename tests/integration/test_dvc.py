"""`dvc repro` in a fresh copy of the repository: the real stages, caching, and the MLflow run they share."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.data import load_split
from tests.conftest import stage_env


def repro(repo: Path, env: dict[str, str], *args: str) -> tuple[list[str], float]:
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", *args], cwd=repo, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.findall(r"Running stage '(\w+)'", proc.stdout), elapsed


def set_params(repo: Path, **changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def only_run(repo: Path):
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-cnn")
    runs = client.search_runs([exp.experiment_id])
    return client, exp, runs


def test_dvc_repro_smoke_caching_and_mlflow(repo_copy, mirror):
    env = stage_env(mirror)
    set_params(repo_copy, train={"subset": 300, "verbose": "0"})
    stages, _ = repro(repo_copy, env)
    assert stages == ["download", "preprocess", "train", "evaluate"]

    metrics = json.loads((repo_copy / "reports" / "metrics.json").read_text())
    assert metrics["test_samples"] == 10000 and 0.1 < metrics["test_accuracy"] <= 1
    client, exp, runs = only_run(repo_copy)
    # Store and artifacts at the project root, resolved from the root, not wherever the process ran.
    assert exp.artifact_location == (repo_copy / "mlruns").as_uri()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.info.run_id == json.loads((repo_copy / "models" / "mlflow_run.json").read_text())["run_id"]
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.params["train.subset"] == "300" and run.data.tags["dvc"] == "true"
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])

    # Nothing changed: nothing runs, fast.
    stages, elapsed = repro(repo_copy, env)
    assert stages == [] and elapsed < 5, (stages, elapsed)

    # Another optimizer: only train and evaluate run, in a second MLflow run.
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["optimizer"] = {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages, _ = repro(repo_copy, env)
    assert stages == ["train", "evaluate"]
    _, _, runs = only_run(repo_copy)
    assert sorted(r.data.params["optimizer.name"] for r in runs) == ["adam", "sgd"]


@pytest.mark.slow
def test_full_default_pipeline(repo_copy, mirror):
    """`make run`'s `dvc repro` with the seed's defaults on all 60,000 images: >= 0.98, reproduced by pyfunc."""
    env = stage_env(mirror)
    stages, elapsed = repro(repo_copy, env)
    assert stages == ["download", "preprocess", "train", "evaluate"]
    metrics = json.loads((repo_copy / "reports" / "metrics.json").read_text())
    print(f"full pipeline: {elapsed:.1f} s, {metrics}")
    assert metrics["test_accuracy"] >= 0.98
    client, _, runs = only_run(repo_copy)
    run = runs[0]
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["train_samples"] == 60000
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    x, y = load_split(repo_copy / "data" / "processed", "test")
    assert float((np.asarray(model.predict(x)).argmax(1) == y).mean()) == metrics["test_accuracy"]
