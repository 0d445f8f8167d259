"""Stage ``train``: fit the configured model (:func:`pipeline.model.fit.fit`) and log it to the active run.

Consumes: ``paths.processed_dir``/train.npz and the ``model``, ``optimizer``, ``train``, ``metrics`` and ``seed``
config. Produces: ``paths.model``, ``paths.history`` (for 2+ epochs), ``paths.steps`` (by the fit) and, in MLflow: the training
curve and per-epoch metrics (:class:`pipeline.tracking.MetricsLogger`), the training time, the parameter count,
the training data as a dataset input, the reports and the model (a LoggedModel with a signature, so
``mlflow.pyfunc`` serves it). :func:`main` also writes ``paths.run_info``, the MLflow run and logged model that
evaluate reads.

Run: ``dvc repro train``, or ``python -m pipeline.stages.train`` (reads params.yaml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline import tracking
from pipeline.config import Config
from pipeline.core.files import remove, sha256_file
from pipeline.core.timing import Timer
from pipeline.model.fit import TrainResult, fit
from pipeline.model.inference import load_predictor
from pipeline.stages import stage_main


@dataclass
class Trained:
    result: TrainResult
    model_id: str | None  # the LoggedModel; None when no run was active or tracking.log_model is false


def run(cfg: Config) -> Trained:
    """Fit and log into the active run (if any): the one training of the DVC stage and the Hydra app."""
    result = fit(cfg, observers=[tracking.MetricsLogger()])
    if len(result.history.get("loss", ())) < 2:
        # One epoch is one point, no curve: the per-epoch plot (DVC draws the folder's files) shows nothing rather
        # than a dot, and the epoch's metrics are in MLflow (the run's epoch metrics) all the same.
        remove(result.history_path)
    return Trained(result, log_training(cfg, result))


def log_training(cfg: Config, result: TrainResult) -> str | None:
    """Log a training's result to the active run; return the logged model's id (None: no model logged)."""
    if not tracking.active():
        return None
    tracking.log_metrics(
        {"train_time_s": result.train_seconds, "parameters": result.parameters, "train_samples": result.samples}
    )
    tags = {
        "precision": result.precision,
        "strategy": result.strategy,
        "replicas": str(len(result.devices) or 1),
        "op_determinism": str(result.deterministic).lower(),
        "model_sha256": result.model_sha256,
    }
    if os.environ.get("DVC_STAGE"):
        # The model's hash as dvc.lock records this stage's output: from the run to the commit or experiment
        # whose dvc.lock holds it (git log -S <md5> dvc.lock), as the run's dvc_exp_name and git_commit lead there.
        tags["dvc_model_md5"] = sha256_file(result.model_path, "md5")
    if result.devices:
        tags["devices"] = ",".join(result.devices)
    tracking.set_tags(tags)
    tracking.log_dataset(cfg, *result.inputs, split="train", context="training")
    if result.history_path.exists():
        tracking.log_artifact(result.history_path, "reports")
    tracking.log_artifact(result.steps_path, "reports")
    if not cfg.tracking.log_model:
        return None
    return tracking.log_model(
        result.model_path, result.example, tracking.config_params(cfg), {"model_sha256": result.model_sha256},
        dataset=cfg.dataset, loader=load_predictor,
    )  # fmt: skip


def main(fast_exit: bool = False) -> None:
    def job(cfg: Config, timer: Timer) -> None:
        remove(cfg.paths.run_info)
        with tracking.start_run(cfg) as active_run:
            timer.mark("open run")
            trained = run(cfg)
            timer.mark("train")
            timer.add(trained.result.timings, into="train")
        record = tracking.record_of(active_run, trained.model_id, model_sha256=trained.result.model_sha256)
        record.write(cfg.paths.run_info)
        timer.mark("close run")

    stage_main("train", job, fast_exit)


if __name__ == "__main__":
    main(fast_exit=True)
