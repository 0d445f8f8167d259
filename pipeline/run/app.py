"""The Hydra app: ``python -m pipeline.run [overrides]`` trains and evaluates one config in one MLflow run.

Consumes: ``conf/`` composed with command-line overrides (``optimizer=sgd train.subset=3000``) and
``$DATA_MIRROR``. Produces, per job, in Hydra's job output folder (``outputs/<date>/<time>/`` or
``multirun/<date>/<time>/<n>/``): the model, the reports and the MLflow run records (``paths.model``,
``run_info``, ``eval_info``, ``history``, ``metrics``, ``confusion``, ``per_class`` are redirected there,
so parallel jobs never clobber each other), ``config.yaml`` (the composed config, resolved) and ``.hydra/``
(what Hydra would write there, written by the job so that every file is redacted). In MLflow: one run
holding train's and evaluate's metrics and the model, the config and the overrides as artifacts
(``config/``), and a tag ``overrides`` = ``optimizer=sgd train.subset=3000`` that reruns it as
``dvc exp run -S optimizer=sgd -S train.subset=3000``.

The app never writes what ``dvc.yaml`` declares as outputs: each job's data is prepared once per content
in ``paths.data_cache`` (:mod:`pipeline.data.prepare`), so ``dvc status`` stays clean and a sweep over datasets
trains and tests each job on its own data.

Before Hydra starts, :func:`main` checks the command line (:mod:`pipeline.run.overrides`): an unknown key,
group or choice, or for a single run any bad value, prints ``error: ...`` with the key, what is allowed and
a "did you mean", exits 2 and leaves no folder behind; credentials in overrides are swapped for environment
references, so Hydra's own files and log lines never hold them.

Sweeps: ``python -m pipeline.run -m optimizer=sgd,rmsprop,adam`` runs one job per value; the callback
in :mod:`pipeline.run.sweep` opens one MLflow parent run for the sweep (each job's run is its child) and
prints the jobs' results, best first. Add ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` to run jobs
side by side, ``hydra/launcher=ray`` to run them as Ray tasks on a local Ray instance, or
``hydra/launcher=ray_cluster hydra.launcher.ray.init.address=HOST:PORT`` on a Ray cluster
(``conf/hydra/launcher/ray_cluster.yaml``, ``docs/scaling_out.md``); each run is tagged with where it ran
(``host``, and ``ray_node_id`` and ``ray_node_ip`` under Ray). The return value (test accuracy; validation
accuracy when ``train.validation_split`` > 0, so a tuner never looks at the test split) is what sweepers such
as Optuna maximise.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.config import CONF_DIR, JOB_OUTPUTS, Config, validate
from pipeline.core import redact
from pipeline.core.errors import user_errors
from pipeline.core.files import write_text
from pipeline.run.objective import check_tuner, objective
from pipeline.run.overrides import prepare_argv

log = logging.getLogger(__name__)


def job_overrides(hc: Any) -> list[str]:
    return [str(o) for o in hc.overrides.task]


def with_job_outputs(cfg: Config, output_dir: Path | str, raw_dir: Path, processed_dir: Path) -> Config:
    """A copy of ``cfg`` whose per-job outputs live under ``output_dir`` (same layout as the project's) and
    whose data is the prepared data, not DVC's."""
    output_dir = Path(output_dir)
    paths = dataclasses.replace(cfg.paths, raw_dir=str(raw_dir), processed_dir=str(processed_dir))
    for key in JOB_OUTPUTS:  # the schema's list: a new stage's outputs follow without a change here
        p = Path(getattr(paths, key))
        setattr(paths, key, str(output_dir / (p.name if p.is_absolute() else p)))
    return dataclasses.replace(cfg, paths=paths)


def placement_tags() -> dict[str, str]:
    """Where this job ran: the host and, in a Ray task (Hydra's Ray launcher), the Ray node and its address."""
    tags = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")  # imported only where Ray runs the job
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        if context.get_task_id() is not None:  # a task, not the driver
            node = context.get_node_id()
            tags["ray_node_id"] = node
            tags["ray_node_ip"] = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), "?")
    return tags


def write_job_files(output_dir: Path, raw: DictConfig, hc: Any) -> dict[str, Any]:
    """``config.yaml`` (resolved) and ``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, redacted.
    Returns the redacted resolved config (what the run logs)."""
    config_tree = redact.redact_tree(OmegaConf.to_container(raw, resolve=True))
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config_tree)))
    hydra_dir = output_dir / ".hydra"
    unresolved = redact.redact_tree(OmegaConf.to_container(raw, resolve=False))
    write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(unresolved)))
    hydra_tree = redact.redact_tree(OmegaConf.to_container(hc, resolve=False))
    write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_tree})))
    write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(redact.redact_tree(job_overrides(hc)))))
    return config_tree


def run_name(cfg: Config, overrides: list[str]) -> str | None:
    """A name that says what differs; MLflow's random names repeat once train() seeded `random`."""
    if cfg.tracking.run_name is not None:
        return cfg.tracking.run_name
    return " ".join(overrides)[:200] or None


def run_job(raw: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = job_overrides(hc)
    source = "config" + (f" (overrides: {' '.join(overrides)})" if overrides else "")
    cfg = validate(raw, source=source)  # before any work
    multirun = hc.mode == RunMode.MULTIRUN
    check_tuner(cfg, str(getattr(hc.sweeper, "_target_", "") or "") if multirun else "")

    from pipeline import tracking
    from pipeline.data.prepare import ensure_data
    from pipeline.stages import evaluate, train
    from pipeline.tracking.sweeps import parent_run_id

    output_dir = Path(hc.runtime.output_dir)
    config_tree = write_job_files(output_dir, raw, hc)
    prepared = ensure_data(cfg.dataset, cfg.paths.data_cache)
    job_cfg = with_job_outputs(cfg, output_dir, prepared.raw_dir, prepared.processed_dir)

    parent = None
    if multirun:
        sweep_dir = Path(str(hc.sweep.dir))
        if not sweep_dir.is_absolute():  # relative to where the command ran, even with hydra.job.chdir=true
            sweep_dir = Path(hydra.utils.get_original_cwd()) / sweep_dir
        parent = parent_run_id(sweep_dir)
    override_str = " ".join(overrides)
    tags = {
        "overrides": override_str,
        "hydra_output_dir": str(output_dir),
        "hydra_mode": "MULTIRUN" if multirun else "RUN",
        "data_dir": str(prepared.processed_dir.resolve()),
        "data_digest": prepared.digest,
        **placement_tags(),
    }
    if multirun:
        tags["hydra_job_num"] = str(hc.job.num)

    # Params are the composed config as `dvc exp run -S` would reproduce it (project paths), not the job's.
    with tracking.start_run(cfg, parent_run_id=parent, tags=tags, run_name=run_name(cfg, overrides)) as run:
        tracking.log_dict(config_tree, "config/config.yaml")
        overrides_logged = {"overrides": redact.redact_tree(overrides), "command": redact.redact(override_str)}
        tracking.log_dict(overrides_logged, "config/overrides.yaml")
        tracking.record_of(run).write(job_cfg.paths.run_info)  # the run is open: its record exists
        trained = train.run(job_cfg)
        record = tracking.record_of(run, trained.model_id, model_sha256=trained.result.model_sha256)
        record.write(job_cfg.paths.run_info)
        evaluated = evaluate.run(job_cfg, evaluate.evaluate(job_cfg, record), trained.model_id, run.info.run_id)
        value = objective(cfg, trained.result.history, evaluated.result.metrics)
        tracking.log_metrics({"objective": value})
    tracking.record_of(run, trained.model_id, run.info.run_id).write(job_cfg.paths.eval_info)
    log.info(
        "run %s: test_accuracy %.4f (%s)", run.info.run_id, evaluated.result.metrics["test_accuracy"],
        override_str or "defaults",
    )  # fmt: skip
    return value


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(raw: DictConfig) -> float:
    redact.install()  # again in each joblib worker process
    with user_errors():
        return run_job(raw)
    raise AssertionError("unreachable")  # user_errors exits


def main() -> None:
    """``python -m pipeline.run``: check the command line (credentials out, bad keys refused), then Hydra."""
    redact.install()
    with user_errors():
        sys.argv[1:] = prepare_argv(sys.argv[1:])
    hydra_main()
