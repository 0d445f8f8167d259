"""`python -m pipeline.run`: single runs, multiruns with an MLflow parent, parallel joblib jobs, Optuna.

Each test runs the real Hydra app in a subprocess inside a fresh copy of the repository (so Hydra's
outputs/ and multirun/ folders and the MLflow store are the copy's), on small subsets. Sweeps read the
session's preprocessed MNIST (``paths.*_dir`` overrides, stamped fresh) instead of preparing it again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml

from pipeline.config import compose, validate
from pipeline.run import PARENT_RUN_FILE, ensure_data, stamp_path, write_stamp
from pipeline.sweep import format_csv, format_table, results_rows
from tests.conftest import ROOT, stage_env

SMALL = ("train.subset=300", "train.verbose=0")


def run_app(repo: Path, mirror: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=repo,
        env=stage_env(mirror, MPLBACKEND="Agg"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def store(repo: Path) -> tuple[mlflow.MlflowClient, list]:
    """The copy's default MLflow store (sqlite:///<root>/mlflow.db) and all its runs."""
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-cnn")
    assert exp is not None, "no MLflow experiment was created"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


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


def printed_table(stdout: str) -> list[list[str]]:
    """Rows of the sweep's Markdown table: [overrides, test_accuracy, ...]."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "overrides" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


@pytest.fixture(scope="session")
def shared_data(data_dirs) -> tuple[str, ...]:
    """Overrides pointing at the session's processed MNIST, stamped as fresh so no job prepares it again."""
    raw, processed = data_dirs
    overrides = (f"paths.raw_dir={raw}", f"paths.processed_dir={processed}")
    write_stamp(validate(compose(list(overrides))))
    return overrides


def tracked_outputs(repo: Path) -> dict[str, bytes | None]:
    """The project's own (DVC) outputs: jobs of pipeline.run must leave them alone."""
    names = ("models/model.keras", "models/mlflow_run.json", "reports/metrics.json", "reports/history.csv")
    return {n: (repo / n).read_bytes() if (repo / n).exists() else None for n in names}


# --------------------------------------------------------------------------- config and data


def test_params_yaml_is_still_the_plain_composition():
    """The optional `hparams_search` default adds nothing unless chosen."""
    from omegaconf import OmegaConf

    assert OmegaConf.to_yaml(compose()) == (ROOT / "params.yaml").read_text()
    assert compose(["hparams_search=optuna_lr"]).train.validation_split == 0.1


def test_ensure_data_preprocesses_only_missing_or_stale(make_cfg, tmp_path, monkeypatch):
    import pipeline.preprocess

    calls = []
    real = pipeline.preprocess.preprocess
    monkeypatch.setattr(pipeline.preprocess, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = make_cfg()
    cfg.paths.processed_dir = str(tmp_path / "processed")
    train_npz = tmp_path / "processed" / "train.npz"

    assert ensure_data(cfg) is True and len(calls) == 1  # missing: prepared
    assert stamp_path(cfg.paths.processed_dir) == tmp_path / ".processed.source.json"
    assert not (tmp_path / "processed" / "source.json").exists()  # DVC's output folder holds only the splits
    assert ensure_data(cfg) is False and len(calls) == 1  # fresh: nothing done

    st = train_npz.stat()
    os.utime(train_npz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten with the same bytes (dvc checkout)
    assert ensure_data(cfg) is False and len(calls) == 1
    stamp = json.loads(stamp_path(cfg.paths.processed_dir).read_text())
    assert stamp["outputs"]["train.npz"]["mtime_ns"] == st.st_mtime_ns + 10**9  # the stamp caught up

    data = bytearray(train_npz.read_bytes())
    data[-100] ^= 0xFF
    train_npz.write_bytes(bytes(data))  # same size, other content
    assert ensure_data(cfg) is True and len(calls) == 2

    (tmp_path / "processed" / "test.npz").unlink()
    assert ensure_data(cfg) is True and len(calls) == 3

    stamp = json.loads(stamp_path(cfg.paths.processed_dir).read_text())
    stamp["files"]["train_images"] = "0" * 64  # made from other data
    stamp_path(cfg.paths.processed_dir).write_text(json.dumps(stamp))
    assert ensure_data(cfg) is True and len(calls) == 4


def fake_run(overrides: str, status: str = "FINISHED", **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        data=SimpleNamespace(tags={"overrides": overrides}, metrics=metrics),
        info=SimpleNamespace(status=status, run_id=f"id-{overrides}"),
    )


@pytest.mark.parametrize("with_tabulate", [True, False])
def test_results_table_is_sorted_best_first(monkeypatch, with_tabulate):
    if not with_tabulate:
        monkeypatch.setitem(sys.modules, "tabulate", None)  # import fails: the hand-made layout
    runs = [
        fake_run("optimizer=sgd", test_accuracy=0.41, test_loss=2.26, train_time_s=5.8),
        fake_run("optimizer=adam", "FAILED"),
        fake_run("optimizer=rmsprop", test_accuracy=0.92, test_loss=0.25, train_time_s=3.7),
    ]
    rows = results_rows(runs)
    assert [r["overrides"] for r in rows] == ["optimizer=rmsprop", "optimizer=sgd", "optimizer=adam"]
    lines = format_table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["overrides", "test_accuracy", "test_loss", "train_time_s", "status", "run_id"]
    assert set(lines[1]) <= set("|-: ")
    assert [c.strip() for c in lines[2].strip("|").split("|")][:4] == ["optimizer=rmsprop", "0.9200", "0.2500", "3.70"]
    assert [c.strip() for c in lines[4].strip("|").split("|")][:5] == ["optimizer=adam", "-", "-", "-", "FAILED"]
    assert format_csv(rows).splitlines()[1].startswith("optimizer=rmsprop,0.92,0.25,3.7,FINISHED")


# --------------------------------------------------------------------------- errors


def test_config_errors_exit_before_any_work(repo_copy, mirror, shared_data):
    proc = run_app(repo_copy, mirror, "optimizer=foo")
    assert proc.returncode != 0
    assert "Could not find 'optimizer/foo'" in proc.stderr
    for choice in ("sgd", "rmsprop", "adam"):
        assert re.search(rf"^\s+{choice}$", proc.stderr, re.M), proc.stderr  # Hydra lists the choices

    proc = run_app(repo_copy, mirror, "train.batch_size=0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "'train.batch_size'" in proc.stderr and ">= 1" in proc.stderr
    assert "Traceback" not in proc.stderr

    # In a multirun every job is validated before any runs: the bad one is named, nothing is started.
    proc = run_app(repo_copy, mirror, "-m", "train.batch_size=0,32", *SMALL, *shared_data)
    assert proc.returncode == 2, proc.stderr
    assert "1 job(s) of the sweep have bad config; nothing was run" in proc.stderr
    assert "job (train.batch_size=0 " in proc.stderr and "'train.batch_size': 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo_copy / "mlflow.db").exists()  # no parent run, no job run


# --------------------------------------------------------------------------- runs


def test_single_run_logs_one_finished_run_with_model_and_overrides(repo_copy, mirror):
    before = tracked_outputs(repo_copy)
    proc = ok(run_app(repo_copy, mirror, "optimizer=sgd", *SMALL))  # prepares the copy's own data/

    assert (repo_copy / "data" / "processed" / "train.npz").is_file()
    assert json.loads(stamp_path(repo_copy / "data" / "processed").read_text())["dataset"] == "mnist"
    client, runs = store(repo_copy)
    assert len(runs) == 1, "a single run creates no parent run"
    run = runs[0]
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in tags
    assert tags["overrides"] == "optimizer=sgd train.subset=300 train.verbose=0"
    assert params["optimizer.name"] == "sgd" and params["train.subset"] == "300"
    assert params["paths.model"] == "models/model.keras"  # params: the config as dvc exp run -S reproduces it
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["objective"] == metrics["test_accuracy"]
    assert len(logged_models(client, run)) == 1

    out = Path(tags["hydra_output_dir"])
    assert out.parent.parent == repo_copy / "outputs"
    saved = json.loads((out / "reports" / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (out / "models" / "model.keras").is_file()
    assert json.loads((out / "models" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == ["optimizer=sgd", *SMALL]
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"]["name"] == "sgd"
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/overrides.yaml"))
    assert logged["overrides"] == ["optimizer=sgd", *SMALL]
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/config.yaml"))
    assert logged["train"]["subset"] == 300 and "hydra" not in logged
    assert tracked_outputs(repo_copy) == before, "the job wrote into the project's DVC outputs"
    assert "test_accuracy" in proc.stdout + proc.stderr  # the job's log line (Hydra logs to stdout)


def test_multirun_over_optimizers_makes_parent_children_and_sorted_table(repo_copy, mirror, shared_data):
    before = tracked_outputs(repo_copy)
    proc = ok(run_app(repo_copy, mirror, "-m", "optimizer=sgd,rmsprop,adam", *SMALL, *shared_data))

    client, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert len(runs) == 4 and len(children) == 3
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep-") and parent.info.run_name.endswith("-optimizer")
    assert "optimizer=sgd,rmsprop,adam" in parent.data.tags["sweep_overrides"]
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"] == parent.info.run_id
    assert {c.data.tags["optimizer"] for c in children} == {"sgd", "rmsprop", "adam"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert "test_accuracy" in child.data.metrics and "train_time_s" in child.data.metrics
        assert child.data.tags["overrides"].startswith("optimizer=")
        assert Path(child.data.tags["hydra_output_dir"]).parent == sweep_dir
        assert len(logged_models(client, child)) == 1
    assert parent.data.metrics["child_runs"] == 3
    assert parent.data.metrics["best_test_accuracy"] == max(c.data.metrics["test_accuracy"] for c in children)

    table = printed_table(proc.stdout)
    assert [row[0] for row in table] == [
        c.data.tags["overrides"] for c in sorted(children, key=lambda c: -c.data.metrics["test_accuracy"])
    ]
    accuracies = [float(row[1]) for row in table]
    assert accuracies == sorted(accuracies, reverse=True)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_results.md", "sweep_results.csv"} <= artifacts
    assert tracked_outputs(repo_copy) == before


def test_joblib_launcher_runs_two_jobs_side_by_side(repo_copy, mirror, shared_data):
    args = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer=sgd,adam", *SMALL, *shared_data)
    proc = ok(run_app(repo_copy, mirror, *args))
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr

    client, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and len(runs) == 3, "a run was lost"  # the workers read the parent id from the file
    assert {c.data.tags["optimizer"] for c in children} == {"sgd", "adam"}
    assert {c.data.tags["hydra_job_num"] for c in children} == {"0", "1"}
    assert all(c.info.status == "FINISHED" and "test_accuracy" in c.data.metrics for c in children)
    a, b = children
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time, "the jobs did not overlap"
    assert len({c.data.tags["hydra_output_dir"] for c in children}) == 2


def test_optuna_learning_rate_search_maximises_validation_accuracy(repo_copy, mirror, shared_data):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    args = ("-m", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2", *SMALL, *shared_data)
    proc = ok(run_app(repo_copy, mirror, *args))

    _, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        assert 1e-4 <= float(child.data.params["optimizer.learning_rate"]) <= 1e-2
        assert float(child.data.params["train.validation_split"]) == 0.1
        assert child.data.metrics["objective"] == child.data.metrics["val_accuracy"]  # the tuner never sees test
    results = yaml.safe_load((Path(parent.data.tags["sweep_dir"]) / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(c.data.metrics["val_accuracy"] for c in children))
    assert "val_accuracy" in proc.stdout


def test_interrupted_sweep_leaves_no_run_running(repo_copy, mirror, shared_data, tmp_path):
    args = ("-m", "optimizer=sgd,adam", "train.subset=3000", "train.verbose=0", *shared_data)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", *args], cwd=repo_copy, env=stage_env(mirror), stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 120
            while not list(repo_copy.glob("multirun/*/*/0/models/mlflow_run.json")):  # the first job's run is open
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
                time.sleep(0.2)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) != 0
        finally:
            proc.kill()
    _, runs = store(repo_copy)
    parent, children = split_parent(runs)
    assert [c.info.status for c in children] == ["KILLED"]
    assert parent.info.status == "KILLED", (tmp_path / "log").read_text()[-3000:]
