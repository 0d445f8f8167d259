"""A typo never costs a retrain, and a stage never runs on the wrong interpreter.

Every output of every stage is cached (or a plot or a metric), so DVC's run-cache restores `train` and
`evaluate` instead of rerunning them: after a refused params.yaml is fixed, and for a `dvc exp run` of a
configuration already run. Restored outputs still name the MLflow run that made them, and no run or registry
version is added. In a copy of the project on the small MNIST subset, with real DVC and MLflow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.config import plain
from tests.conftest import copy_repo, stage_env

#: What DVC 3 prints when it restores a stage's outputs from its run-cache instead of running it.
RESTORED = "Stage '{}' is cached - skipping run, checking out outputs"


def dvc(repo: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def counts(repo: Path) -> tuple[int, int]:
    """(MLflow runs, registry versions) in the copy's store."""
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return len(runs), len(client.search_model_versions())


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_small):
    """The project on the small subset (conf/ itself says so, as `dvc exp run` recomposes it), run once."""
    small, _ = mnist_small
    repo = copy_repo(tmp_path_factory.mktemp("restore") / "repo", store=True)
    (repo / "conf" / "dataset" / "mnist_small.yaml").write_text(yaml.safe_dump(plain(small)))
    config = repo / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - dataset: mnist ", "  - dataset: mnist_small "))
    train = repo / "conf" / "train" / "default.yaml"
    train.write_text(
        train.read_text().replace("subset: null ", "subset: 300  ").replace("verbose: auto ", "verbose: silent ")
    )
    env = stage_env(Path(small.mirrors[0]))
    subprocess.run([sys.executable, "-m", "pipeline.config"], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "small"], cwd=repo, check=True
    )
    first = dvc(repo, env, "repro")
    assert "Running stage 'train'" in first.stdout
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)  # the baseline a change report compares with
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "adam, run"], cwd=repo, check=True
    )
    return repo, env


@pytest.mark.e2e  # dvc repro and dvc exp run on the module's project
def test_a_refused_params_yaml_then_fixed_restores_train_and_evaluate_from_the_cache(project):
    repo, env = project
    params = repo / "params.yaml"
    good = params.read_text()
    run_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    before = counts(repo)
    params.write_text(good.replace("batch_size: 32", "batch_size: -1"))
    typo = dvc(repo, env, "repro", check=False)
    assert typo.returncode != 0
    assert "error: params.yaml: bad value for 'train.batch_size': -1; allowed: an integer >= 1" in typo.stderr
    assert "Traceback" not in typo.stderr
    params.write_text(good)
    fixed = dvc(repo, env, "repro")
    assert RESTORED.format("train") in fixed.stdout, fixed.stdout  # the run-cache: no retraining
    assert "Running stage" not in fixed.stdout  # evaluate's inputs are back as they were: nothing to run
    assert counts(repo) == before  # no MLflow run, no registry version added
    assert json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"] == run_id  # still its run
    assert dvc(repo, env, "status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.e2e  # dvc repro and dvc exp run on the module's project
def test_dvc_exp_run_of_a_configuration_already_run_restores_instead_of_retraining(project):
    repo, env = project
    trained = dvc(repo, env, "exp", "run", "-S", "optimizer=sgd")
    assert "Running stage 'train'" in trained.stdout
    before = counts(repo)
    for optimizer in ("adam", "sgd"):  # the baseline's configuration, then sgd's again: both were run already
        again = dvc(repo, env, "exp", "run", "-S", f"optimizer={optimizer}")
        assert RESTORED.format("train") in again.stdout, again.stdout
        assert "Running stage 'train'" not in again.stdout
    assert counts(repo) == before
    venv = Path(sys.executable).parent.parent
    table = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", "exps", f"VENV={venv}"], cwd=repo, env={**env, "COLUMNS": "120"},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert all(len(line) <= 120 for line in lines), table.stdout
    assert "…" not in table.stdout and "optimizer.name" in table.stdout and "test_accuracy" in table.stdout
    assert "sgd" in table.stdout and "adam" in table.stdout


def test_a_stage_run_by_an_interpreter_without_the_packages_uses_the_projects_or_says_how(tmp_path):
    """DVC runs `python3 -m pipeline.stages...` with whatever PATH names; the package re-runs it with the
    project's .venv/bin/python, and without one says in one line how to run it."""
    system = Path("/usr/bin/python3")
    probe = subprocess.run([str(system), "-c", "import omegaconf"], capture_output=True) if system.exists() else None
    if probe is None or probe.returncode == 0:
        pytest.skip("needs a /usr/bin/python3 without the project's packages")
    repo = copy_repo(tmp_path / "repo")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    refused = subprocess.run([str(system), "-m", "pipeline.tracking", "uri"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: {system} lacks the project's packages"), refused.stderr
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)  # the project's venv
    ran = subprocess.run([str(system), "-m", "pipeline.tracking", "uri"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == f"sqlite:///{repo / 'mlflow.db'}"
    # A .venv made by that very interpreter (Debian's python3 -m venv): its bin/python links to the same binary,
    # so only the prefix tells the two apart. Its packages: the project venv's, through a .pth file.
    (repo / ".venv").unlink()
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(repo / ".venv")], check=True, timeout=120)
    site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "project.pth").write_text("".join(f"{p}\n" for p in sys.path if p.endswith("site-packages")))
    ran = subprocess.run([str(system), "-m", "pipeline.tracking", "uri"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == f"sqlite:///{repo / 'mlflow.db'}"


@pytest.mark.e2e  # dvc repro and dvc exp run on the module's project
def test_the_change_report_compares_two_commits_with_different_optimizers(project):
    """make report BASE=HEAD: the workspace holding an sgd experiment (dvc exp run leaves its commit's outputs
    there) against the committed adam baseline: the params and metrics diffs, both revisions' plots in one image,
    a link to each MLflow run, and the gate's rule applied to the two models on the same test images."""
    repo, env = project
    dvc(repo, env, "exp", "run", "-S", "optimizer=sgd")  # trained, or restored where the test above ran it
    venv = Path(sys.executable).parent.parent
    report = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", "report", "BASE=HEAD", f"VENV={venv}"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    text = (repo / "reports" / "change.md").read_text()
    assert text.startswith("# Change report: workspace against HEAD")
    params_diff = text.split("## Params")[1].split("## Metrics")[0]
    assert re.search(r"\|\s*optimizer\.name\s*\|\s*adam\s*\|\s*sgd\s*\|", params_diff), params_diff
    metrics_diff = text.split("## Metrics")[1].split("## Plots")[0]
    assert "test_accuracy" in metrics_diff and "reports/metrics.json" in metrics_diff, metrics_diff
    png = repo / "reports" / "change.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](change.png)" in text
    runs = re.findall(r"/#/experiments/(\d+)/runs/([0-9a-f]{32})\)", text)
    assert len(runs) == 2 and runs[0][1] != runs[1][1], text
    assert runs[1][1] == json.loads((repo / "reports" / "mlflow_eval.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert [client.get_run(run_id).data.params["optimizer.name"] for _, run_id in runs] == ["adam", "sgd"]
    gate = text.split("## The registry gate")[1]
    assert re.search(r"would (not )?be promoted", gate) and re.search(r"b=\d+ .*c=\d+ .*McNemar p=", gate), gate
    ignored = subprocess.run(["git", "status", "--porcelain", "reports/"], cwd=repo, capture_output=True, text=True)
    assert "change." not in ignored.stdout  # the report and its image are ignored by git
