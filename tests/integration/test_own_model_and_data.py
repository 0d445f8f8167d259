"""Your model, your images: the second architecture trained for real, and an image-folder dataset built on the
fly from scikit-learn's bundled 8x8 digits (offline), taken through ``dvc repro``, the Hydra app with the
second model, the registry gate and predict, as docs/own_data_and_model.md tells a user to.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from tests.conftest import stage_env
from tests.integration.conftest import store

#: The module's project is made by `dvc repro`: `make test-e2e`, not the quick suite.
pytestmark = pytest.mark.e2e

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory, mirror):
    """A copy of the project on the shipped example, as docs/own_data_and_model.md runs it."""
    from pipeline.data.examples import write_sk_digits
    from tests.conftest import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("own") / "repo", store=True)
    images = write_sk_digits(repo / "data" / "examples" / "sk_digits")  # python -m pipeline.data.examples
    env = stage_env(mirror, MPLBACKEND="Agg")
    params = ["dataset=sk_digits", "train.epochs=10", "train.verbose=silent"]
    subprocess.run([sys.executable, "-m", "pipeline.config", *params], cwd=repo, env=env, check=True)
    repro = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert repro.returncode == 0, repro.stdout[-4000:] + repro.stderr[-4000:]
    return repo, env, [(repo / p, c) for p, c in images], repro.stdout + repro.stderr


def test_dvc_repro_trains_and_gates_an_image_folder_dataset(digits_project):
    repo, _, images, out = digits_project
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["test_samples"] == pytest.approx(len(images) * 0.2, abs=10)  # a stratified fifth of each class
    assert metrics["test_accuracy"] >= 0.8, metrics
    per_class = (repo / "reports" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,error_rate,errors,images" and [r.split(",")[0] for r in per_class[1:]] == CLASSES
    wrong = round((1 - metrics["test_accuracy"]) * metrics["test_samples"])
    assert sum(int(r.split(",")[2]) for r in per_class[1:]) == wrong  # the errors, class by class
    assert len((repo / "reports" / "confusion.csv").read_text().splitlines()) == 1 + wrong  # the errors only
    gate = json.loads((repo / "reports" / "registry.json").read_text())
    assert gate["registered"] and gate["model"] == "sk_digits-cnn" and gate["promoted"]
    assert "resized" in out  # the 8x8 images were resized to 16x16, and the preprocess stage said so
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run = client.get_run(json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"])
    assert {f"test_accuracy_class_{c}" for c in CLASSES} <= set(run.data.metrics)  # per class, by its name
    assert run.data.tags["dataset"] == "sk_digits" and len(run.data.tags["model_sha256"]) == 64


def test_the_app_trains_the_second_model_on_it_and_predict_reads_images_back(digits_project, monkeypatch, capfd):
    """The Hydra app and predict run in this process (their real ``main()``, as ``python -m`` runs them: no process
    boundary is tested here), in the copy, on its store."""
    import pipeline.run.app
    from pipeline.core.errors import run_cli
    from pipeline.predict.images import main as predict_main
    from tests.integration.conftest import drop_closed_handlers

    repo, env, images, _ = digits_project
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DATA_MIRROR", env["DATA_MIRROR"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    drop_closed_handlers()
    # The copy's conf/ has registry.export: [] (copy_repo); this process composes the project's, so say it here.
    args = ["dataset=sk_digits", "model=resnet_small", "train.epochs=10", "train.verbose=silent", "registry.export=[]"]
    monkeypatch.setattr(sys, "argv", ["pipeline.run", *args])
    pipeline.run.app.main()
    app = capfd.readouterr()
    assert re.search(r"test_accuracy 0\.[89]\d+|test_accuracy 1\.0", app.out + app.err), app.err[-4000:]
    runs = [r for r in store(repo)[1] if r.data.params.get("model.name") == "resnet_small"]
    assert len(runs) == 1 and runs[0].data.metrics["test_accuracy"] >= 0.8  # the second architecture, trained
    assert runs[0].data.tags["dataset"] == "sk_digits" and runs[0].info.status == "FINISHED"
    sample = images[::180][:10]
    logger = logging.getLogger("pipeline.predict.images")  # its INFO line: hidden from a person, as python -m does
    logger.setLevel(logging.WARNING)
    try:
        run_cli(lambda: predict_main([str(p) for p, _ in sample]))  # the champion of the copy's params.yaml, by alias
    finally:
        logger.setLevel(logging.NOTSET)
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == len(sample)
    right = sum(line.startswith(f"{path}: {label} (p=") for line, (path, label) in zip(lines, sample, strict=True))
    assert right >= 0.7 * len(sample), "\n".join(lines)


def test_a_run_of_ten_epochs_has_its_per_epoch_plot(digits_project):
    """The per-epoch plot is drawn where it is a curve: reports/epochs/history.csv exists for 2+ epochs."""
    repo, env, _, _ = digits_project
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    plot = json.loads(shown.stdout)["data"]["reports/epochs/history.csv"][0]["content"]
    points = plot["data"]["values"]  # one per epoch and y field (loss, accuracy)
    assert sorted({int(float(p["epoch"])) for p in points}) == list(range(10)) and len(points) == 20
    assert plot["title"]["text"] == "per epoch"
