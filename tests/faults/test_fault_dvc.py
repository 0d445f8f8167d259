"""The fault tier, DVC's cache: ``.dvc/cache`` on a real read-only bind mount, or on a real tmpfs too small for
the outputs, under a real ``dvc repro`` in a copy of the project (the small MNIST subset).

What the user sees is DVC's own output (DVC 3.67), which these tests pin so that a change in it is noticed: a
read-only cache is one ``ERROR:`` line naming the cache folder, exit status 255, ``dvc.lock`` left as it was; a
full cache is one ``ERROR: failed to transfer`` line for each file that did not fit and exit status 0, the stage
recorded in ``dvc.lock`` and its outputs ``not in cache``. No traceback either way (DVC prints one only with
``-v``). The stage itself ran and its outputs are whole in the workspace; once the cache works, ``dvc repro``
caches them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import plain
from tests.conftest import copy_repo, stage_env
from tests.faults.test_fault_matrix import mounted

# The fault tier: `make test-faults` (and CI), outside `make test`, the quick suite.
pytestmark = pytest.mark.faults


def dvc(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path, mnist_small):
    """A fresh copy of the project on the small subset, with an empty ``.dvc/cache`` folder to mount on."""
    small, _ = mnist_small
    repo = copy_repo(tmp_path / "repo")
    (repo / "conf" / "dataset" / "mnist_small.yaml").write_text(yaml.safe_dump(plain(small)))
    config = repo / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - dataset: mnist ", "  - dataset: mnist_small "))
    env = stage_env(Path(small.mirrors[0]))
    subprocess.run([sys.executable, "-m", "pipeline.config"], cwd=repo, env=env, check=True, capture_output=True)
    (repo / ".dvc" / "cache").mkdir(parents=True, exist_ok=True)
    return repo, env


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def dvc_errors(proc: subprocess.CompletedProcess) -> list[str]:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    return [line for line in out.splitlines() if line.startswith("ERROR:")]


def assert_outputs_whole(repo: Path, dataset) -> None:
    """The stage's outputs are in the workspace, each file the verified one."""
    expected = {spec.file.removesuffix(".gz"): spec.sha256 for spec in dataset.files.values()}
    assert digests(repo / "data" / "raw") == expected


def assert_a_rerun_commits_them(repo: Path, env: dict[str, str]) -> None:
    again = dvc(repo, env, "repro", "download")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert dvc(repo, env, "status", "download").stdout.strip() == "Data and pipelines are up to date."


def test_a_read_only_dvc_cache_is_dvcs_one_line_and_the_outputs_stay(project, mnist_small):
    """DVC's one line names the cache folder; ``dvc.lock`` is left as it was."""
    repo, env = project
    cache = repo / ".dvc" / "cache"
    lock = (repo / "dvc.lock").read_text()
    with mounted(["mount", "--bind", str(cache), str(cache)], ["mount", "-o", "remount,bind,ro", str(cache)],
                 target=cache):  # fmt: skip
        proc = dvc(repo, env, "repro", "download")
    assert proc.returncode == 255, proc.stdout[-2000:] + proc.stderr[-2000:]  # DVC's status for an OSError
    errors = dvc_errors(proc)
    assert len(errors) == 1 and "failed to reproduce 'download'" in errors[0], errors
    assert "Read-only file system" in errors[0] and str(cache) in errors[0], errors[0]
    assert_outputs_whole(repo, mnist_small[0])
    assert (repo / "dvc.lock").read_text() == lock, "the failed repro recorded the stage"
    assert_a_rerun_commits_them(repo, env)


def test_a_full_dvc_cache_is_one_error_line_a_file_and_exit_0_from_dvc_the_outputs_stay(project, mnist_small):
    """DVC 3.67 reports each file it could not copy into a full cache (``ERROR: failed to transfer ... No space
    left on device: <file> -> <cache>``) and still exits 0, recording the stage in ``dvc.lock``; ``dvc status``
    then says ``not in cache``. Pinned here, so a DVC that fails the repro instead is noticed (docs/faults.md)."""
    repo, env = project
    cache = repo / ".dvc" / "cache"
    with mounted(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache)], target=cache):
        proc = dvc(repo, env, "repro", "download")
        status = dvc(repo, env, "status", "download").stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = dvc_errors(proc)
    assert 1 <= len(errors) <= 4, errors  # one a file that did not fit: four files, the smallest may fit
    for line in errors:
        assert line.startswith("ERROR: failed to transfer") and "No space left on device" in line, line
        assert f"{repo}/data/raw/" in line and str(cache) in line, line
    assert "not in cache:       data/raw" in status, status
    assert_outputs_whole(repo, mnist_small[0])
    assert_a_rerun_commits_them(repo, env)
