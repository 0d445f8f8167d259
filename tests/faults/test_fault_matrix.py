"""The fault tier: faults made from outside, the way a machine really fails, against the real stages.

Each test is one cell of docs/faults.md's matrix (what the pipeline touches x how it fails) and asserts its
outcome: survived, or one clear line (exit 2, the thing named, what to do, no traceback) with nothing attached to
the wrong model. Real faults where this machine allows them: a read-only bind mount and a full tmpfs (root and
mount(8) needed: skipped otherwise), a store file overwritten, a model file swapped, a hostile image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline import tracking
from pipeline.config import to_dict
from pipeline.stages import train
from tests.conftest import stage_env

# The fault tier: `make test-faults` (and CI), outside `make test`, the quick suite.
pytestmark = pytest.mark.faults


def stage(name: str, folder: Path, *args: str, module: str | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.stages.<name>`` (or ``module``) run in ``folder``, as DVC runs it."""
    env = stage_env(Path(folder))
    return subprocess.run(
        [sys.executable, "-m", module or f"pipeline.stages.{name}", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def write_params(cfg, folder: Path) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    print(errors[0])  # the line the docs quote (pytest -rP shows it)
    return errors[0]


@contextlib.contextmanager
def mounted(*cmds: list[str], target: Path) -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real mount needs root and mount(8)")
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


def store_cfg(make_cfg, store: Path, *overrides: str):
    cfg = make_cfg(*overrides)
    cfg.tracking.uri = f"sqlite:///{store / 'mlflow.db'}"
    return cfg


def test_a_read_only_store_is_one_line_naming_the_store(make_cfg, tmp_path):
    """The SQLite store on a read-only file system (a real read-only bind mount)."""
    store = tmp_path / "store"
    store.mkdir()
    cfg = store_cfg(make_cfg, store)
    with tracking.start_run(cfg):  # a store that exists and worked
        pass
    write_params(cfg, tmp_path)
    with mounted(["mount", "--bind", str(store), str(store)], ["mount", "-o", "remount,bind,ro", str(store)],
                 target=store):  # fmt: skip
        proc = stage("train", tmp_path)
    one_clear_line(proc, f"MLflow store sqlite:///{store}/mlflow.db: read-only", "make it writable")
    assert not Path(cfg.paths.model).exists() and not Path(cfg.paths.run_info).exists()


def test_a_full_disk_under_the_store_is_one_line_naming_the_store(make_cfg, tmp_path):
    """The store's file system full (a real 64 KiB tmpfs): no store can be created on it."""
    store = tmp_path / "store"
    store.mkdir()
    with mounted(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(store)], target=store):
        (store / "filler").write_bytes(b"\0" * 60_000)  # what is left: less than a store needs
        cfg = store_cfg(make_cfg, store)
        write_params(cfg, tmp_path)
        proc = stage("train", tmp_path)
    one_clear_line(proc, f"MLflow store sqlite:///{store}/mlflow.db: full", "free disk space")


def test_a_damaged_store_is_one_line_naming_the_store(make_cfg, tmp_path):
    """The store file overwritten: no longer a database."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "mlflow.db").write_bytes(b"this is not a database, it is a text file\n" * 200)
    cfg = store_cfg(make_cfg, store)
    write_params(cfg, tmp_path)
    proc = stage("train", tmp_path)
    one_clear_line(proc, f"MLflow store sqlite:///{store}/mlflow.db: damaged", "move it aside")


def the_runs(cfg) -> list:
    """The runs of the config's store and experiment, newest first."""
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if exp else []


def assert_failed_keeping_the_curve(cfg) -> None:
    """The stage's run (the newest) is FAILED, and what it logged before the fault is still there."""
    run = the_runs(cfg)[0]
    assert run.info.status == "FAILED", run.info.status
    assert "batch_loss" in run.data.metrics and run.data.params, run.data
    assert not Path(cfg.paths.run_info).exists()


def test_a_read_only_artifact_location_is_one_line_naming_it_and_the_run_failed(make_cfg, tmp_path):
    """``mlruns/`` beside a writable SQLite store, on a real read-only bind mount: the run opens and trains, and
    the first artifact it logs fails."""
    store = tmp_path / "store"
    artifacts = store / "mlruns"
    artifacts.mkdir(parents=True)
    cfg = store_cfg(make_cfg, store, "train.subset=256")
    with tracking.start_run(cfg):  # the experiment exists, its artifact location mlruns/
        pass
    write_params(cfg, tmp_path)
    with mounted(["mount", "--bind", str(artifacts), str(artifacts)],
                 ["mount", "-o", "remount,bind,ro", str(artifacts)], target=artifacts):  # fmt: skip
        proc = stage("train", tmp_path)
    one_clear_line(proc, f"MLflow artifact location {artifacts}: read-only", "make it writable")
    assert_failed_keeping_the_curve(cfg)


def test_a_full_artifact_location_is_one_line_naming_it_and_the_run_failed(make_cfg, tmp_path):
    """``mlruns/`` on a real 1 MiB tmpfs: the reports fit, the model (megabytes) does not."""
    store = tmp_path / "store"
    artifacts = store / "mlruns"
    artifacts.mkdir(parents=True)
    cfg = store_cfg(make_cfg, store, "train.subset=256")
    write_params(cfg, tmp_path)
    with mounted(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(artifacts)], target=artifacts):
        proc = stage("train", tmp_path)
        logged = sorted(p.name for p in artifacts.rglob("*") if p.is_file())
    one_clear_line(proc, f"MLflow artifact location {artifacts}: full", "No space left on device", "free disk space")
    assert any(name.endswith("steps.csv") or name.endswith("steps.json") for name in logged), logged
    assert_failed_keeping_the_curve(cfg)


def test_a_disk_filling_while_the_model_is_saved_is_one_line_naming_it_and_the_run_failed(make_cfg, tmp_path):
    """The outputs' folder on a real 1 MiB tmpfs: the training curve fits, the model (megabytes) does not. No
    half-written file is left, at the model's path or beside it."""
    cfg = make_cfg("train.subset=256")
    out = Path(cfg.paths.model).parent
    out.mkdir(parents=True)
    write_params(cfg, tmp_path)
    with mounted(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], target=out):
        proc = stage("train", tmp_path)
        left = sorted(p.name for p in out.iterdir())
    one_clear_line(proc, f"{cfg.paths.model}: disk full (No space left on device; ", " free there)", "free space")
    assert Path(cfg.paths.model).name not in left and not [n for n in left if ".tmp" in n], left
    assert_failed_keeping_the_curve(cfg)


@pytest.fixture
def trained(make_cfg, tmp_path):
    """A trained model with its run record, as the train stage leaves them, and the params for the next stage."""
    cfg = make_cfg("train.subset=256")
    with tracking.start_run(cfg) as run:
        done = train.run(cfg)
    tracking.record_of(run, done.model_id, model_sha256=done.result.model_sha256).write(cfg.paths.run_info)
    write_params(cfg, tmp_path)
    return cfg, run, done


def swap_model(cfg, tmp_path) -> None:
    """Another valid Keras model in place of the trained one (trained on fewer images: other weights)."""
    other = dataclass_copy(cfg, tmp_path / "other")
    other.train.subset = 64
    train.run(other)  # no active run: nothing logged
    shutil.copyfile(other.paths.model, cfg.paths.model)


def dataclass_copy(cfg, folder: Path):
    import copy

    other = copy.deepcopy(cfg)
    for key in ("model", "history", "steps"):
        setattr(other.paths, key, str(folder / Path(getattr(cfg.paths, key)).name))
    other.paths.backup_dir = str(folder / "backup")
    return other


def test_evaluate_refuses_a_model_file_that_is_not_the_one_its_run_logged(trained, tmp_path):
    """The worst fault: numbers attached to the wrong model. The evaluate stage checks the file's SHA-256 against
    the training's record before it scores anything: no metric, no report, no registry version."""
    cfg, run, done = trained
    swap_model(cfg, tmp_path)
    proc = stage("evaluate", tmp_path)
    line = one_clear_line(proc, f"{cfg.paths.model}: SHA-256", f"not the model that run {run.info.run_id}")
    assert done.model_id in line and done.result.model_sha256[:16] in line
    assert not Path(cfg.paths.metrics).exists() and not Path(cfg.paths.registry).exists()
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    assert "test_accuracy" not in client.get_run(run.info.run_id).data.metrics
    assert client.search_registered_models() == []


def test_predict_refuses_the_pipelines_model_file_when_it_is_not_its_runs(trained, tmp_path):
    cfg, run, _ = trained
    swap_model(cfg, tmp_path)
    from PIL import Image, ImageDraw

    digit = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(digit).line([(14, 4), (14, 24)], fill=255, width=3)  # a "1"
    digit.save(tmp_path / "one.png")
    proc = stage("", tmp_path, str(tmp_path / "one.png"), "--model", cfg.paths.model, "--params",
                 str(tmp_path / "params.yaml"), module="pipeline.predict")  # fmt: skip
    one_clear_line(proc, f"{cfg.paths.model}: SHA-256", f"not the model that run {run.info.run_id}")


def test_the_training_records_its_model_files_hash_with_the_run_and_the_logged_model(trained):
    cfg, run, done = trained
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    assert client.get_run(run.info.run_id).data.tags["model_sha256"] == done.result.model_sha256
    assert client.get_logged_model(done.model_id).tags["model_sha256"] == done.result.model_sha256
    assert json.loads(Path(cfg.paths.run_info).read_text())["model_sha256"] == done.result.model_sha256


@pytest.mark.parametrize(
    ("side", "refused_as"),
    [(30_000, "DecompressionBombError"), (11_000, "DecompressionBombWarning")],
    ids=["900-megapixel", "121-megapixel"],
)
def test_a_decompression_bomb_is_refused_by_predict_in_one_line(tmp_path, side, refused_as):
    """An image whose header declares 900 (or 121) million pixels, in a small file. Over twice Pillow's limit
    it refuses to open it; between once and twice it only warns and decodes gigabytes: predict refuses both."""
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # 1 bit a pixel, all black: a small file
    assert bomb.stat().st_size < 2_000_000
    proc = stage("", tmp_path, str(bomb), module="pipeline.predict")
    one_clear_line(proc, f"{bomb}: not an image Pillow can read ({refused_as})")


def test_an_unreachable_tracking_server_is_one_line_before_any_training(make_cfg, tmp_path):
    """A tracking server that is down: the train stage says so at once (not after MLflow's minutes of retries)
    and trains nothing."""
    from pipeline.server.manage import free_port

    cfg = make_cfg()
    cfg.tracking.uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    write_params(cfg, tmp_path)
    proc = stage("train", tmp_path)
    one_clear_line(proc, f"MLflow tracking server {cfg.tracking.uri} is not reachable", "make server")
    assert not Path(cfg.paths.model).exists()
