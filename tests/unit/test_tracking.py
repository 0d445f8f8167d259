"""Where the MLflow store and its files are, decided without touching a store."""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import compose, validate
from pipeline.tracking import orphans


def test_relative_sqlite_is_the_project_roots_and_its_files_sit_beside_it(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    uri = tracking.tracking_uri(validate(compose()).tracking)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.artifact_location(uri) == (tmp_path / "mlruns").as_uri()
    assert tracking.running_dir(uri) == tmp_path / "mlflow.db-running"
    other = f"sqlite:///{tmp_path}/elsewhere/team.db"
    assert tracking.artifact_location(other) == (tmp_path / "elsewhere" / "mlruns").as_uri()
    assert tracking.running_dir(other) == tmp_path / "elsewhere" / "team.db-running"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:pw@tracking:5000")
    server = tracking.tracking_uri(validate(compose()).tracking)
    assert server == "http://u:pw@tracking:5000" and tracking.artifact_location(server) is None
    assert "pw" not in str(tracking.running_dir(server)) and tmp_path not in tracking.running_dir(server).parents


def test_dvc_root_counts_only_inside_its_temporary_experiment_copies(tmp_path, monkeypatch):
    project, other = tmp_path / "project", tmp_path / "other"
    copy = project / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    for folder in (project, other, copy):
        folder.mkdir(parents=True)
        (folder / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.chdir(copy)
    assert tracking.project_root() == project  # a queued experiment logs to the project's store
    monkeypatch.chdir(other)
    assert tracking.project_root() == other  # a stale DVC_ROOT from another project is ignored
    monkeypatch.chdir(project / ".dvc")
    assert tracking.project_root() == project


def test_run_records_name_a_live_process_exactly(tmp_path):
    import os
    import subprocess
    import sys

    record = {"pid": os.getpid(), "started": orphans._process_start(os.getpid()), "host": None}
    assert orphans._owner_alive(record)
    assert not orphans._owner_alive({**record, "started": "1"})  # same pid, another process: the pid was reused
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not orphans._owner_alive({"pid": dead.pid, "started": None})
    assert orphans._owner_alive({"pid": 1, "host": "another-machine"})  # not ours to judge
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.record_add(uri, "r1")
    assert [p.name for p in Path(tmp_path, "m.db-running").iterdir()] == ["r1.json"]  # no temporary left
