"""Train and evaluate in-process on real MNIST subsets: the stage functions, what their callers log to
MLflow, a finished run staying history, retried MLflow calls, and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import tracking
from pipeline.config import to_dict
from pipeline.data import load_split
from pipeline.evaluate import evaluate, load_model, log_evaluation
from pipeline.model import SEED_PARAMETERS
from pipeline.train import epoch_logger, log_training, train


def client_for(cfg) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))


def test_stage_functions_need_no_mlflow_run(make_cfg, tmp_path):
    """train() and evaluate() return what they computed and write their files; nothing is logged."""
    cfg = make_cfg("train.subset=256")
    result = train(cfg)
    ev = evaluate(cfg)
    assert result.parameters == SEED_PARAMETERS and result.samples == 256 and Path(cfg.paths.model).is_file()
    assert result.example.shape == (1, 28, 28, 1)
    assert ev.metrics["test_samples"] == 10000 and [p.name for p in ev.report_paths] == ["metrics.json", "per_class.csv", "confusion.csv"]
    assert not (tmp_path / "mlflow.db").exists() and mlflow.active_run() is None


def test_train_evaluate_one_mlflow_run(make_cfg):
    cfg = make_cfg("optimizer=sgd", "train.epochs=2")
    with tracking.start_run(cfg) as run:
        result = train(cfg, callbacks=[epoch_logger()])
        model_id = log_training(cfg, result)
        ev = evaluate(cfg)
        log_evaluation(cfg, ev, model_id)

    # Files: model, history, reports.
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert set(metrics) == {"test_loss", "test_accuracy", "test_samples"} and metrics["test_samples"] == 10000
    assert 0.2 < metrics["test_accuracy"] <= 1.0  # 512 samples, 2 epochs of SGD: learning (chance is 0.1)
    assert len(Path(cfg.paths.confusion).read_text().splitlines()) == 10001
    per_class = Path(cfg.paths.per_class).read_text().splitlines()
    assert per_class[0] == "class,accuracy" and len(per_class) == 11
    assert Path(cfg.paths.history).read_text().splitlines()[0].startswith("epoch,")

    # The run: finished, every config value as a dotted param, per-epoch and test metrics, tags, model.
    client = client_for(cfg)
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
    assert {"reports", "plots"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    # The history metric for accuracy is Keras' sparse accuracy, not the seed's broken categorical one.
    assert r.data.metrics["accuracy"] == pytest.approx(result.history["accuracy"][-1])

    # One logged model, with the run's params, and the test metrics linked to it.
    (logged,) = client.search_logged_models(experiment_ids=[r.info.experiment_id])
    assert logged.model_id == model_id and logged.status.to_proto() == 2  # READY
    linked = {m.key: m.value for m in logged.metrics if m.run_id == r.info.run_id}
    assert linked["test_accuracy"] == metrics["test_accuracy"]

    # The logged model serves through pyfunc and reproduces the reported accuracy; so does the saved file.
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    x, y = load_split(cfg.paths.processed_dir, "test")
    assert float((np.asarray(pyfunc.predict(x)).argmax(1) == y).mean()) == metrics["test_accuracy"]
    assert float((load_model(cfg.paths.model).predict(x, verbose=0).argmax(1) == y).mean()) == ev.metrics["test_accuracy"]


def stage_main(module, cfg, folder: Path, monkeypatch) -> None:
    """Run a DVC stage's main() in-process, reading the given config as params.yaml in ``folder``."""
    (folder / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    monkeypatch.chdir(folder)
    module.main()


def test_a_finished_run_is_history_a_re_evaluation_gets_its_own_run(make_cfg, tmp_path, monkeypatch):
    """Fresh execution: evaluate completes train's run. Later (evaluation changed, or train restored from
    DVC's run-cache): a new evaluation run, child of the training run, linked to the same logged model,
    while the training run stays exactly as it was."""
    import pipeline.evaluate
    import pipeline.train

    cfg = make_cfg("train.subset=256")
    stage_main(pipeline.train, cfg, tmp_path, monkeypatch)
    trained = tracking.RunRecord.read(cfg.paths.run_info)
    stage_main(pipeline.evaluate, cfg, tmp_path, monkeypatch)
    first = tracking.RunRecord.read(cfg.paths.eval_info)
    assert first.run_id == trained.run_id and first.model_id == trained.model_id  # one run per fresh execution

    client = client_for(cfg)
    before = client.get_run(trained.run_id)
    history_before = [(m.value, m.timestamp) for m in client.get_metric_history(trained.run_id, "test_accuracy")]
    assert before.info.status == "FINISHED" and len(history_before) == 1

    stage_main(pipeline.evaluate, cfg, tmp_path, monkeypatch)  # evaluate alone, later
    again = tracking.RunRecord.read(cfg.paths.eval_info)
    after = client.get_run(trained.run_id)
    assert after.info.end_time == before.info.end_time and after.info.status == "FINISHED"
    assert [(m.value, m.timestamp) for m in client.get_metric_history(trained.run_id, "test_accuracy")] == history_before
    assert after.data.metrics == before.data.metrics and after.data.tags == before.data.tags

    assert again.run_id != trained.run_id and again.train_run_id == trained.run_id
    evaluation = client.get_run(again.run_id)
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["mlflow.parentRunId"] == trained.run_id
    assert evaluation.data.tags["evaluates_run_id"] == trained.run_id and evaluation.data.tags["model_id"] == trained.model_id
    assert evaluation.data.metrics["test_accuracy"] == before.data.metrics["test_accuracy"]  # same model, same data
    model = client.get_logged_model(trained.model_id)
    assert {m.run_id for m in model.metrics if m.key == "test_accuracy"} == {trained.run_id, again.run_id}


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
        model_id = log_training(cfg, train(cfg))
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert len(run_calls) == 1 and len(model_calls) == 1  # the failed attempt was not repeated
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run.info.run_id]
    assert [m.model_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])] == [model_id]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_same_config_and_seed_same_metrics(make_cfg):
    cfg = make_cfg("train.subset=1000")
    first = (train(cfg).history, evaluate(cfg).metrics)
    second = (train(cfg).history, evaluate(cfg).metrics)
    assert first == second
