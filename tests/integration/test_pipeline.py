"""Train and evaluate in-process on real MNIST subsets: the stage functions, what their callers log to
MLflow, retried MLflow calls, and reproducibility. (A finished run staying history is tested where DVC
reruns evaluate alone: tests/integration/test_dvc.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.data.formats import load_split
from pipeline.model.architectures import SEED_PARAMETERS
from pipeline.model.fit import fit
from pipeline.stages.evaluate import evaluate, log_evaluation
from pipeline.stages.train import log_training
from pipeline.tracking.models import model_requirements


def client_for(cfg) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))


def test_train_evaluate_one_mlflow_run(make_cfg):
    cfg = make_cfg("optimizer=sgd", "train.epochs=2")
    with tracking.start_run(cfg) as run:
        result = fit(cfg, observers=[tracking.MetricsLogger()])
        model_id = log_training(cfg, result)
        ev = evaluate(cfg)
        log_evaluation(cfg, ev, model_id)

    # Files: model, history, reports.
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert set(metrics) == {"test_loss", "test_accuracy", "test_samples"} and metrics["test_samples"] == 1000
    assert 0.2 < metrics["test_accuracy"] <= 1.0  # 512 samples, 2 epochs of SGD: learning (chance is 0.1)
    wrong = int(np.sum(ev.predictions != ev.labels))
    assert wrong == round((1 - metrics["test_accuracy"]) * 1000) > 0
    assert len(Path(cfg.paths.confusion).read_text().splitlines()) == 1 + wrong  # the errors only, one row each
    per_class = Path(cfg.paths.per_class).read_text().splitlines()
    assert per_class[0] == "class,error_rate,errors,images" and len(per_class) == 11
    rows = [r.split(",") for r in per_class[1:]]
    assert sum(int(r[2]) for r in rows) == wrong and sum(int(r[3]) for r in rows) == 1000
    assert [float(r[1]) for r in rows] == [round(1 - a, 6) for a in ev.per_class_accuracy]
    # train.log_every: auto: 512 samples, 2 epochs of batch 32 are 32 steps, each a point of the curve.
    curve = Path(cfg.paths.steps).read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in curve] == list(range(1, 33))
    assert Path(cfg.paths.history).read_text().splitlines()[0].startswith("epoch,")

    # The run: finished, every config value as a dotted param, per-epoch and test metrics, tags, model.
    client = client_for(cfg)
    r = client.get_run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "mnist_small-sgd-lr0.01-bs32-e2"  # what differs, not a random name
    experiment = client.get_experiment(r.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    inputs = {(i.dataset.name, i.tags[0].value) for i in r.inputs.dataset_inputs}
    assert inputs == {("mnist_small-train[:512]", "training"), ("mnist_small-test", "evaluation")}
    assert r.data.params["optimizer.name"] == "sgd"
    assert r.data.params["optimizer.learning_rate"] == "0.01"
    assert r.data.params["train.batch_size"] == "32" and r.data.params["train.subset"] == "512"
    assert r.data.params["dataset.files.train_images.sha256"] == cfg.dataset.files["train_images"].sha256
    assert r.data.params["dataset.name"] == "mnist_small"
    assert len(r.data.params) >= 40
    assert [m.step for m in client.get_metric_history(r.info.run_id, "accuracy")] == [0, 1]
    assert len(client.get_metric_history(r.info.run_id, "loss")) == 2
    assert [p.step for p in client.get_metric_history(r.info.run_id, "batch_accuracy")] == list(range(1, 33))
    assert r.data.metrics["test_accuracy"] == metrics["test_accuracy"]  # the very number in metrics.json
    assert r.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-12)
    assert r.data.metrics["parameters"] == SEED_PARAMETERS
    assert len(r.data.tags["data_sha256"]) == 64 and r.data.tags["optimizer"] == "sgd"
    assert {"reports", "plots"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    # The history metric for accuracy is Keras' sparse accuracy, not the seed's broken categorical one.
    assert r.data.metrics["accuracy"] == pytest.approx(result.history["accuracy"][-1])

    # One logged model, with the run's params, and the test metrics linked to it.
    (logged,) = client.search_logged_models(experiment_ids=[r.info.experiment_id])
    assert logged.model_id == model_id and logged.status.to_proto() == 2  # READY
    # Its requirements pin this environment's versions.
    requirements = mlflow.artifacts.download_artifacts(artifact_uri=f"{logged.artifact_location}/requirements.txt")
    assert set(model_requirements()) <= set(Path(requirements).read_text().split())
    linked = {m.key: m.value for m in logged.metrics if m.run_id == r.info.run_id}
    assert linked["test_accuracy"] == metrics["test_accuracy"]

    # The logged model serves through pyfunc and reproduces the reported accuracy (which evaluate measured
    # on the saved file, reloaded in safe mode).
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    x, y = load_split(cfg.paths.processed_dir, "test")
    answers = pyfunc.predict(list(x))  # the served contract: a list of instances, an answer each
    labels = np.array([int(a["label"]) for a in answers])
    assert float((labels == y).mean()) == metrics["test_accuracy"] == ev.metrics["test_accuracy"]


def test_retried_calls_never_create_a_second_run_or_model(make_cfg, monkeypatch):
    """The store commits, then reports 'database is locked' (as SQLite can under load): the retry finds
    what the first attempt created instead of creating another."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy.exc import OperationalError

    def commit_then_locked(name):
        real = getattr(SqlAlchemyStore, name)
        calls = []

        def wrapper(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                raise OperationalError("INSERT ...", {}, Exception("database is locked"))
            return result

        monkeypatch.setattr(SqlAlchemyStore, name, wrapper)
        return calls

    run_calls, model_calls = commit_then_locked("create_run"), commit_then_locked("create_logged_model")
    cfg = make_cfg("train.subset=64")
    with tracking.start_run(cfg) as run:
        model_id = log_training(cfg, fit(cfg))
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert len(run_calls) == 1 and len(model_calls) == 1  # the failed attempt was not repeated
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run.info.run_id]
    assert [m.model_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])] == [model_id]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_stage_functions_need_no_mlflow_run_and_same_seed_same_model(make_cfg, tmp_path):
    """fit() and evaluate() return what they computed and write their files, with nothing logged; the same
    config and seed give bit-identical weights (so identical test metrics) and training history."""

    def weights(result) -> list[bytes]:
        return [w.tobytes() for w in result.model.get_weights()]

    cfg = make_cfg("train.subset=320")
    first, second = fit(cfg), fit(cfg)
    # log_every: auto on a run shorter than 20 steps (320 samples, batch 32): every step a curve point.
    assert [int(r.split(",")[0]) for r in Path(cfg.paths.steps).read_text().splitlines()[1:]] == list(range(1, 11))
    assert first.history == second.history and weights(first) == weights(second)
    assert weights(first) != weights(fit(make_cfg("train.subset=320", "seed=7")))
    assert first.parameters == SEED_PARAMETERS and first.samples == 320 and first.example.shape == (1, 28, 28, 1)
    ev = evaluate(cfg)
    assert ev.metrics["test_samples"] == 1000 and [p.name for p in ev.report_paths] == [
        "metrics.json",
        "per_class.csv",
        "confusion.csv",
    ]
    client = mlflow.MlflowClient(cfg.tracking.uri)  # the test's store, made empty: still empty
    assert [e.name for e in client.search_experiments()] == ["Default"] and mlflow.active_run() is None
    assert not client.search_runs(["0"]) and not client.search_logged_models(experiment_ids=["0"])
