"""DVC experiments in a fresh git copy of the repository: a queued sweep with `dvc exp run -S`, two workers.

Every experiment, run by DVC in a temporary copy under .dvc/tmp/exps, must log to the project root's MLflow
store (tracking resolves the store against $DVC_ROOT there), and `dvc exp show` must list each with its
params and metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import stage_env

SMALL = ("-S", "train.subset=300", "-S", "train.verbose=0")


def dvc(repo: Path, env: dict[str, str], *args: str, timeout: int = 300) -> str:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def root_runs(repo: Path) -> dict[str, mlflow.entities.Run]:
    """Runs of the root store, by DVC experiment name; no other store may have appeared."""
    stray = [p for p in repo.rglob("mlflow.db") if p != repo / "mlflow.db"]
    assert not stray, f"runs logged outside the project root's store: {stray}"
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-cnn")
    assert exp is not None
    return {r.data.tags.get("dvc_exp_name", ""): r for r in client.search_runs([exp.experiment_id])}


def shown(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {"params": params.yaml, "metrics": reports/metrics.json}."""
    out: dict[str, dict] = {}
    for entry in json.loads(dvc(repo, env, "exp", "show", "--json")):
        for group in entry.get("experiments") or []:
            for rev in group["revs"]:
                data = rev["data"]
                out[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": data["metrics"]["reports/metrics.json"]["data"],
                }
    return out


def test_queued_sweep_runs_in_temp_copies_and_logs_to_root_store(repo_copy, mirror):
    env = stage_env(mirror)
    # Two workers meet a store that does not exist yet: its creation is serialised by tracking.setup's lock.
    out = dvc(repo_copy, env, "exp", "run", "--queue", "-S", "optimizer=rmsprop,adam", *SMALL)
    names = re.findall(r"Queued experiment '(\S+)'", out)
    assert len(names) == 2, out
    try:
        dvc(repo_copy, env, "queue", "start", "-j", "2")  # returns at once: the workers run in the background
        deadline = time.monotonic() + 300
        while True:
            status = dvc(repo_copy, env, "queue", "status")
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            assert time.monotonic() < deadline, f"queue still busy:\n{status}"
            time.sleep(3)  # polling the queue, not racing it
        for name in names:
            assert re.search(rf"{re.escape(name)}\s+.*\bSuccess\b", status), status
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo_copy, env=env, capture_output=True, timeout=120)

    runs = root_runs(repo_copy)
    assert set(runs) == set(names)
    experiments = shown(repo_copy, env)
    assert {runs[n].data.params["optimizer.name"] for n in names} == {"rmsprop", "adam"}
    for name in names:
        run, exp = runs[name], experiments[name]
        optimizer = run.data.params["optimizer.name"]
        assert run.info.status == "FINISHED" and run.data.tags.get("dvc") == "true"
        assert run.data.params["train.subset"] == "300"
        assert exp["params"]["optimizer"]["name"] == optimizer and exp["params"]["train"]["subset"] == 300
        assert exp["metrics"]["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
        assert exp["metrics"]["test_loss"] == pytest.approx(run.data.metrics["test_loss"])
