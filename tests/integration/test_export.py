"""A champion's exports: TF-Lite (LiteRT) and ONNX files that give Keras' probabilities on real MNIST test
images, logged with the registry version that the gate promoted, and the docs' snippets that run them.

A Basic_CNN trained on 1,000 real MNIST training images is gated into a store under tmp_path (the first
champion), as the Hydra app does; the exports are compared with Keras' forward pass on the 1,000 test images of
the small subset. The DVC stage's path (scoring in a forked child, the export in the parent afterwards) runs as
the stages' own processes in a copy of the project.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import tracking
from pipeline.config import plain
from pipeline.core.files import sha256_file
from pipeline.data.formats import load_split
from pipeline.model.architectures import SEED_PARAMETERS
from pipeline.model.export import FILES, PREDICTORS
from pipeline.model.export import main as export_main
from pipeline.model.fit import fit
from pipeline.model.score import forward, load_model
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages.train import log_training
from pipeline.tracking.exports import EXPORT_ARTIFACTS
from tests.conftest import ROOT, config_in, copy_repo, data_cache, stage_env

#: Parity with Keras, per format: the largest absolute difference of any class probability of any image...
TOLERANCE = 1e-4
#: ...and the share of images given the same class.
AGREEMENT = 0.999
#: How many test images the parity is checked on.
IMAGES = 1000
DOC = ROOT / "docs" / "export.md"


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mnist_small):
    """A Basic_CNN trained on 1,000 real MNIST images, evaluated and gated (the first champion: promoted) in one
    run, as the Hydra app does; and both files written by the command line from the same ``.keras`` file."""
    tmp = tmp_path_factory.mktemp("export")
    dataset, prepared = mnist_small
    cfg = config_in(tmp, "train.subset=1000", "train.epochs=2", "registry.export=[tflite,onnx]")
    cfg.dataset = dataclasses.replace(dataset)
    cfg.paths.raw_dir, cfg.paths.processed_dir = str(prepared.raw_dir), str(prepared.processed_dir)
    cfg.paths.data_cache = str(data_cache())
    assert cfg.model.name == "basic_cnn" and cfg.registry.export == ["tflite", "onnx"]
    with tracking.start_run(cfg) as run:
        model_id = log_training(cfg, fit(cfg))
        evaluated = evaluate_stage.run(cfg, evaluate_stage.evaluate(cfg), model_id, run.info.run_id)
    x, y = load_split(cfg.paths.processed_dir, "test")
    folder = tmp / "files"
    export_main([cfg.paths.model, str(folder)])
    return {
        "cfg": cfg,
        "run_id": run.info.run_id,
        "model_id": model_id,
        "evaluated": evaluated,
        "uri": tracking.tracking_uri(cfg.tracking),
        "x": x,
        "y": y,
        "keras": forward(load_model(cfg.paths.model), x),
        "files": {fmt: folder / name for fmt, name in FILES.items()},
    }


@pytest.mark.parametrize("fmt", list(FILES))
def test_each_format_gives_keras_probabilities_on_1000_mnist_test_images(champion, fmt):
    x, keras_probs = champion["x"], champion["keras"]
    assert len(x) == IMAGES and x.dtype == np.float32 and float(x.max()) <= 1.0
    assert float((keras_probs.argmax(1) == champion["y"]).mean()) > 0.8  # a trained model, not chance (0.1)
    probs = PREDICTORS[fmt](champion["files"][fmt], x)
    assert probs.shape == keras_probs.shape == (IMAGES, 10) and probs.dtype == np.float32
    assert float(np.abs(probs - keras_probs).max()) <= TOLERANCE
    assert float((probs.argmax(1) == keras_probs.argmax(1)).mean()) >= AGREEMENT
    # Any batch size: the files take (n, 28, 28, 1) for every n, one image too.
    assert np.abs(PREDICTORS[fmt](champion["files"][fmt], x[:1]) - keras_probs[:1]).max() <= TOLERANCE


def test_a_mixed_precision_model_is_exported_in_float32(champion, tmp_path):
    """TF-Lite's converter refuses bfloat16 ops: a model trained with train.precision=mixed_bfloat16 is exported
    as its float32 clone, the same weights, and matches that network's Keras probabilities."""
    import keras

    from pipeline.model.architectures import build_model
    from pipeline.model.export import as_float32, export

    cfg = champion["cfg"]
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        mixed = build_model(cfg.model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(load_model(cfg.paths.model).get_weights())  # the champion's weights
    float32 = as_float32(mixed)
    assert {layer.dtype_policy.compute_dtype for layer in float32.layers} == {"float32"}
    assert as_float32(float32) is float32
    x = champion["x"]
    np.testing.assert_array_equal(forward(float32, x), champion["keras"])  # the same network as the champion
    for fmt, path in export(mixed, tmp_path, list(FILES)).items():
        assert float(np.abs(PREDICTORS[fmt](path, x) - champion["keras"]).max()) <= TOLERANCE


def test_a_promoted_model_has_its_files_in_its_run_and_tagged_on_its_version(champion, tmp_path):
    decision = champion["evaluated"].gate.decision
    assert decision is not None and decision.promoted and decision.version == "1"
    client = mlflow.MlflowClient(champion["uri"])
    run_id = champion["run_id"]
    logged = {a.path: a.file_size for a in client.list_artifacts(run_id, EXPORT_ARTIFACTS)}
    assert set(logged) == {f"{EXPORT_ARTIFACTS}/{name}" for name in FILES.values()}
    version = client.get_model_version(decision.model, decision.version)
    assert version.version == client.get_model_version_by_alias(decision.model, "champion").version
    for fmt, name in FILES.items():
        uri = version.tags[f"export.{fmt}"]
        assert uri == f"runs:/{run_id}/{EXPORT_ARTIFACTS}/{name}"
        path = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path), tracking_uri=champion["uri"]))
        assert sha256_file(path) == version.tags[f"export.{fmt}.sha256"]
        size = int(version.tags[f"export.{fmt}.bytes"])
        assert size == path.stat().st_size == logged[f"{EXPORT_ARTIFACTS}/{name}"]
        # float32 weights: 4 bytes a parameter, within 1% (docs/export.md quotes the size).
        assert abs(size - 4 * SEED_PARAMETERS) <= 0.01 * 4 * SEED_PARAMETERS
        probs = PREDICTORS[fmt](path, champion["x"])  # the logged file loads and gives Keras' classes
        assert float((probs.argmax(1) == champion["keras"].argmax(1)).mean()) >= AGREEMENT


def test_a_model_not_promoted_is_not_exported(champion):
    cfg, run_id = champion["cfg"], champion["run_id"]
    mlflow.set_tracking_uri(champion["uri"])
    result = evaluate_stage.evaluate(cfg)
    again = evaluate_stage.gate(cfg, result, champion["model_id"], run_id)  # the same model: already the champion
    assert again.decision is not None and not again.decision.promoted
    assert evaluate_stage.export_champion(cfg, again, run_id) == {}
    # registry.export: [] turns the export off, for a promotion too.
    off = dataclasses.replace(cfg, registry=dataclasses.replace(cfg.registry, export=[]))
    assert evaluate_stage.export_champion(off, champion["evaluated"].gate, run_id) == {}
    client = mlflow.MlflowClient(champion["uri"])
    assert len(client.search_model_versions(f"name='{cfg.registry.name}'")) == 1


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_docs_snippets_run_and_state_the_tests_thresholds(champion, tmp_path, monkeypatch):
    """docs/export.md's Python blocks, in order, in a folder holding the test split as data/processed/test.npz:
    the first downloads the champion's files from the store, the others run each with its runtime."""
    text = DOC.read_text()
    blocks = python_blocks(text)
    assert len(blocks) == 3
    (tmp_path / "data" / "processed").mkdir(parents=True)
    shutil.copy(Path(champion["cfg"].paths.processed_dir) / "test.npz", tmp_path / "data" / "processed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    mlflow.set_tracking_uri(champion["uri"])
    assert champion["cfg"].registry.name == "mnist-cnn"  # the name the snippet reads (conf/: ${dataset.name}-cnn)
    exec(compile(blocks[0], f"{DOC}: block 1", "exec"), {})
    assert {p.name for p in tmp_path.iterdir()} >= set(FILES.values())
    for i, block in enumerate(blocks[1:], start=2):
        namespace: dict = {}
        exec(compile(block, f"{DOC}: block {i}", "exec"), namespace)
        probs = namespace["probabilities"]
        assert float(np.abs(probs - champion["keras"]).max()) <= TOLERANCE
        assert float((probs.argmax(1) == champion["keras"].argmax(1)).mean()) >= AGREEMENT
    # The thresholds the page states are this test's.
    assert float(re.search(r"within ([\d.e-]+) of Keras", text).group(1)) == TOLERANCE
    assert float(re.search(r"on at least ([\d.]+)%", text).group(1)) / 100 == pytest.approx(AGREEMENT)
    assert f"{4 * SEED_PARAMETERS / 1e6:.1f} MB" in text


@pytest.mark.e2e  # the evaluate stage as its own process, as DVC runs it
def test_the_dvc_stage_exports_after_its_scoring_child(tmp_path, mirror, mnist_small, monkeypatch):
    """``python -m pipeline.stages.evaluate`` as DVC runs it, after a training as the train stage records it:
    it scores in a forked child while its own process has no TensorFlow, then exports the promoted model."""
    from pipeline.config.load import load_params
    from pipeline.stages import train as train_stage

    dataset, prepared = mnist_small
    repo = copy_repo(tmp_path / "repo", exports=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"] = plain(dataset)
    params["paths"]["processed_dir"] = str(prepared.processed_dir)
    params["train"].update(subset=300, epochs=1, verbose="silent")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(repo)  # the store and every output are the copy's (relative to its root)
    cfg = load_params(repo / "params.yaml")
    with tracking.start_run(cfg) as run:  # the train stage's job, in this process: only evaluate's boundary matters
        trained = train_stage.run(cfg)
    tracking.record_of(run, trained.model_id, model_sha256=trained.result.model_sha256).write(cfg.paths.run_info)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.evaluate"],
        cwd=repo, env=stage_env(mirror), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"export: \S+ v1 as tflite, onnx in [\d.]+ s", proc.stderr), proc.stderr[-3000:]
    report = json.loads((repo / "reports" / "registry.json").read_text())
    assert report["promoted"] and report["version"] == "1"
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    version = mlflow.MlflowClient(uri).get_model_version(report["model"], "1")
    assert version.tags["export.onnx"] == f"runs:/{report['run_id']}/{EXPORT_ARTIFACTS}/model.onnx"
    path = mlflow.artifacts.download_artifacts(version.tags["export.tflite"], dst_path=str(tmp_path), tracking_uri=uri)
    x, _ = load_split(prepared.processed_dir, "test")
    keras_probs = forward(load_model(repo / "models" / "model.keras"), x)
    assert float(np.abs(PREDICTORS["tflite"](path, x) - keras_probs).max()) <= TOLERANCE
