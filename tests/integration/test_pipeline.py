"""Train and evaluate in-process on a subset: the model, the reports, and what the MLflow run holds."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.data import load_split
from pipeline.evaluate import evaluate, load_model
from pipeline.model import SEED_PARAMETERS, build_model
from pipeline.train import train


def test_basic_cnn_is_the_seeds_model(make_cfg):
    model = build_model(make_cfg().model)
    assert model.name == "Basic_CNN"
    assert model.count_params() == SEED_PARAMETERS == 1_676_266
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("Dropout") == 3 and kinds.count("Dense") == 2


def test_train_evaluate_one_mlflow_run(make_cfg, data_dirs):
    cfg = make_cfg("optimizer=sgd", "train.epochs=2")
    with tracking.start_run(cfg) as run:
        result = train(cfg)
    with tracking.start_run(cfg, run_id=run.info.run_id):  # evaluate reopens train's run, as the stages do
        ev = evaluate(cfg)

    # Files: model, history, reports.
    assert result.parameters == SEED_PARAMETERS and result.samples == 512
    assert Path(cfg.paths.model).is_file()
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert set(metrics) == {"test_loss", "test_accuracy", "test_samples"} and metrics["test_samples"] == 10000
    assert 0.2 < metrics["test_accuracy"] <= 1.0  # 512 samples, 2 epochs of SGD: learning (chance is 0.1)
    assert len(Path(cfg.paths.confusion).read_text().splitlines()) == 10001
    per_class = Path(cfg.paths.per_class).read_text().splitlines()
    assert per_class[0] == "class,accuracy" and len(per_class) == 11
    assert Path(cfg.paths.history).read_text().splitlines()[0].startswith("epoch,")

    # The run: finished, every config value as a dotted param, per-epoch and test metrics, tags, model.
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    r = client.get_run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["optimizer.name"] == "sgd"
    assert r.data.params["optimizer.learning_rate"] == "0.01"
    assert r.data.params["train.batch_size"] == "32" and r.data.params["train.subset"] == "512"
    assert r.data.params["dataset.files.train_images.sha256"].startswith("ba891046")
    assert len(r.data.params) >= 40
    assert [m.step for m in client.get_metric_history(r.info.run_id, "accuracy")] == [0, 1]
    assert len(client.get_metric_history(r.info.run_id, "loss")) == 2
    assert r.data.metrics["test_accuracy"] == metrics["test_accuracy"]  # the very number in metrics.json
    assert r.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-12)
    assert r.data.metrics["parameters"] == SEED_PARAMETERS
    assert len(r.data.tags["data_sha256"]) == 64 and r.data.tags["optimizer"] == "sgd"
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"reports", "plots"} <= artifacts
    # The history metric for accuracy is Keras' sparse accuracy, not the seed's broken categorical one.
    assert r.data.metrics["accuracy"] == pytest.approx(result.history["accuracy"][-1])

    # The logged model serves through pyfunc and reproduces the reported accuracy.
    model_uri = f"runs:/{r.info.run_id}/model"
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking))
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    x, y = load_split(cfg.paths.processed_dir, "test")
    probs = np.asarray(pyfunc.predict(x))
    assert float((probs.argmax(1) == y).mean()) == metrics["test_accuracy"]
    # And so does the saved file, loaded in safe mode.
    assert float((load_model(cfg.paths.model).predict(x, verbose=0).argmax(1) == y).mean()) == ev.metrics[
        "test_accuracy"
    ]


def test_accuracy_matches_argmax_not_the_seeds_categorical_metric(make_cfg):
    """The seed's bug, pinned: CategoricalAccuracy on integer labels is far from the real accuracy."""
    import keras

    cfg = make_cfg()
    train(cfg)
    x, y = load_split(cfg.paths.processed_dir, "test")
    probs = load_model(cfg.paths.model).predict(x[:2000], verbose=0)
    real = float((probs.argmax(1) == y[:2000]).mean())
    wrong = float(keras.metrics.CategoricalAccuracy()(y[:2000, None].astype("float32"), probs))
    reported = evaluate(cfg).metrics["test_accuracy"]
    assert abs(real - wrong) > 0.3
    assert reported == pytest.approx(float((load_model(cfg.paths.model).predict(x, verbose=0).argmax(1) == y).mean()))
