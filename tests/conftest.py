"""Shared fixtures: configs composed from conf/ with Hydra's compose API, every output under tmp_path.

The real MNIST comes from a local mirror ($DATA_MIRROR, default ../shared/data/mnist): tests never
download. It is fetched and preprocessed once per session; each test gets its own models, reports and
MLflow store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import Config, compose, validate

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("DATA_MIRROR") or ROOT.parent / "shared" / "data" / "mnist").resolve()


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST mirror not found at {MIRROR}: set DATA_MIRROR to a folder with the four .gz files")
    return MIRROR


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory, mirror) -> tuple[Path, Path]:
    """(raw_dir, processed_dir) holding the real MNIST, made once per session by the real stages."""
    from pipeline.download import download
    from pipeline.preprocess import preprocess

    base = tmp_path_factory.mktemp("data")
    cfg = validate(compose())
    download(cfg.dataset, base / "raw", env={"DATA_MIRROR": str(mirror)})
    preprocess(cfg.dataset, base / "raw", base / "processed")
    return base / "raw", base / "processed"


@pytest.fixture
def make_cfg(tmp_path, data_dirs, monkeypatch) -> Callable[..., Config]:
    """Compose conf/ with overrides; data from the session's copy, all outputs and MLflow under tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    raw, processed = data_dirs

    def make(*overrides: str) -> Config:
        cfg = validate(compose(["train.subset=512", "train.verbose=0", *overrides]))
        p = cfg.paths
        p.raw_dir, p.processed_dir = str(raw), str(processed)
        for key in ("model", "run_info", "history", "metrics", "confusion", "per_class"):
            setattr(p, key, str(tmp_path / "out" / Path(getattr(p, key)).name))
        p.backup_dir = str(tmp_path / "backup")
        cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        return cfg

    return make


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the project's tracked files in a fresh git repo, as a clone would have them."""
    dest = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=dest, check=True
    )
    return dest


def stage_env(mirror: Path, **extra: str) -> dict[str, str]:
    """Environment for subprocess stages: this interpreter's bin first on PATH, as `make` sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DATA_MIRROR"] = str(mirror)
    env.update(extra)
    return env
