"""The Hydra app: ``python -m pipeline.run [overrides]`` trains and evaluates one config in one MLflow run.

Consumes: ``conf/`` composed with command-line overrides (``optimizer=sgd train.subset=3000``), the
shared data folders (``paths.raw_dir``, ``paths.processed_dir``) and ``$DATA_MIRROR``. Produces, per
job, in Hydra's job output folder (``outputs/<date>/<time>/`` or ``multirun/<date>/<time>/<n>/``): the
model, the reports and the MLflow run record (``paths.model``, ``run_info``, ``history``, ``metrics``,
``confusion``, ``per_class`` are redirected there, so parallel jobs never clobber each other nor DVC's
outputs), plus ``config.yaml`` (the composed config, resolved, secrets masked) next to Hydra's own
``.hydra/``. In MLflow: one run holding train's and evaluate's metrics and the model, the config and
the overrides as artifacts (``config/``), and a tag ``overrides`` = ``optimizer=sgd train.subset=3000``
that reruns it as ``dvc exp run -S optimizer=sgd -S train.subset=3000``.

Sweeps: ``python -m pipeline.run -m optimizer=sgd,rmsprop,adam`` runs one job per value; the callback
in :mod:`pipeline.sweep` opens one MLflow parent run for the sweep (each job's run is its child) and
prints the jobs' results, best first. Add ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` to run jobs
side by side. The return value (test accuracy; validation accuracy when ``train.validation_split`` >
0, so a tuner never looks at the test split) is what sweepers such as Optuna maximise.

Data is prepared once, not per job: :func:`ensure_data` downloads what is missing and preprocesses
only when the processed ``.npz`` files are missing or stale, judged by a stamp file.

A config error prints ``error: <message>`` naming the key and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.config import Config, validate
from pipeline.download import sha256_file
from pipeline.errors import UserError
from pipeline.files import exclusive_lock

log = logging.getLogger(__name__)

#: The job outputs that move into Hydra's job output folder.
JOB_OUTPUTS = ("model", "run_info", "history", "metrics", "confusion", "per_class")
#: Where a multirun's parent MLflow run id is recorded, inside the sweep folder.
PARENT_RUN_FILE = "mlflow_parent_run.json"
STAMP_VERSION = 1
SPLIT_FILES = ("train.npz", "test.npz")


# --------------------------------------------------------------------------- data, once


def stamp_path(processed_dir: Path | str) -> Path:
    """The stamp sits next to the processed folder (``data/.processed.source.json``), not inside it:
    ``data/processed`` is a DVC output, and a foreign file there would make DVC rerun preprocess."""
    processed_dir = Path(processed_dir)
    return processed_dir.parent / f".{processed_dir.name}.source.json"


def _source(cfg: Config) -> dict[str, Any]:
    d = cfg.dataset
    return {
        "version": STAMP_VERSION,
        "dataset": d.name,
        "num_classes": d.num_classes,
        "files": {key: d.files[key].sha256 for key in sorted(d.files)},
    }


def _fingerprint(path: Path, with_hash: bool) -> dict[str, Any]:
    st = path.stat()
    out: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        out["sha256"] = sha256_file(path)
    return out


def write_stamp(cfg: Config) -> Path:
    """Record that ``paths.processed_dir`` holds this dataset's preprocessed splits (call after writing them)."""
    from pipeline.files import write_json

    processed = Path(cfg.paths.processed_dir)
    stamp = {**_source(cfg), "outputs": {name: _fingerprint(processed / name, True) for name in SPLIT_FILES}}
    path = stamp_path(processed)
    write_json(path, stamp)
    return path


def is_fresh(cfg: Config) -> bool:
    """True if the processed splits exist and the stamp says they come from this config's data.

    Size and mtime match: fresh, no reading. Otherwise (e.g. ``dvc repro`` or ``dvc checkout`` rewrote
    the files) their SHA-256 decides, and a match refreshes the stamp's mtimes.
    """
    processed = Path(cfg.paths.processed_dir)
    try:
        stamp = json.loads(stamp_path(processed).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or {k: stamp.get(k) for k in _source(cfg)} != _source(cfg):
        return False
    outputs = stamp.get("outputs") or {}
    rehashed = False
    for name in SPLIT_FILES:
        path, recorded = processed / name, outputs.get(name) or {}
        if not path.is_file():
            return False
        now = _fingerprint(path, False)
        if now["size"] != recorded.get("size"):
            return False
        if now["mtime_ns"] != recorded.get("mtime_ns"):
            if sha256_file(path) != recorded.get("sha256"):
                return False
            rehashed = True
    if rehashed:
        write_stamp(cfg)
    return True


def ensure_data(cfg: Config) -> bool:
    """Make the processed splits current: download what is missing (verified), preprocess if stale.

    Returns True if it preprocessed, False if the data was already up to date (nothing read but a stamp).
    """
    processed = Path(cfg.paths.processed_dir)
    if is_fresh(cfg):
        return False
    processed.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(processed.parent):  # parallel jobs prepare the data once
        if is_fresh(cfg):  # another job prepared it while we waited
            return False
        from pipeline.download import download
        from pipeline.preprocess import preprocess

        log.info("preparing %s: download (verified) and preprocess into %s", cfg.dataset.name, processed)
        stamp_path(processed).unlink(missing_ok=True)
        download(cfg.dataset, cfg.paths.raw_dir)
        preprocess(cfg.dataset, cfg.paths.raw_dir, processed)
        write_stamp(cfg)
        return True


# --------------------------------------------------------------------------- one job


def job_overrides(hc: Any) -> list[str]:
    return [str(o) for o in hc.overrides.task]


def with_job_outputs(cfg: Config, output_dir: Path | str) -> Config:
    """A copy of ``cfg`` whose per-job outputs live under ``output_dir`` (same layout as the project's)."""
    import dataclasses

    output_dir = Path(output_dir)
    paths = dataclasses.replace(cfg.paths)
    for key in JOB_OUTPUTS:
        p = Path(getattr(paths, key))
        setattr(paths, key, str(output_dir / (p.name if p.is_absolute() else p)))
    return dataclasses.replace(cfg, paths=paths)


def parent_run_id(sweep_dir: Path | str) -> str | None:
    """The sweep's parent MLflow run id that :class:`pipeline.sweep.SweepCallback` recorded, if any."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))["run_id"]
    except FileNotFoundError:
        log.warning("%s not found: this job's run gets no parent (is pipeline.sweep.SweepCallback configured?)", path)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not a valid parent run record (%s); no parent", path, exc)
    return None


def objective(train_history: dict[str, list[float]], test_metrics: dict[str, float], cfg: Config) -> float:
    """What a sweeper maximises: last validation accuracy if there is a validation split, else test accuracy."""
    if cfg.train.validation_split > 0 and train_history.get("val_accuracy"):
        return float(train_history["val_accuracy"][-1])
    return float(test_metrics["test_accuracy"])


def run_job(raw: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = job_overrides(hc)
    source = "config" + (f" (overrides: {' '.join(overrides)})" if overrides else "")
    cfg = validate(raw, source=source)  # before any work

    import mlflow

    from pipeline import tracking
    from pipeline.evaluate import evaluate
    from pipeline.files import write_json, write_text
    from pipeline.train import train

    output_dir = Path(hc.runtime.output_dir)
    job_cfg = with_job_outputs(cfg, output_dir)
    ensure_data(cfg)

    multirun = hc.mode == RunMode.MULTIRUN
    parent = None
    if multirun:
        sweep_dir = Path(str(hc.sweep.dir))
        if not sweep_dir.is_absolute():  # relative to where the command ran, even with hydra.job.chdir=true
            sweep_dir = Path(hydra.utils.get_original_cwd()) / sweep_dir
        parent = parent_run_id(sweep_dir)
    override_str = " ".join(overrides)
    tags = {"overrides": override_str, "hydra_output_dir": str(output_dir), "hydra_mode": str(hc.mode.name)}
    if multirun:
        tags["hydra_job_num"] = str(hc.job.num)
    if cfg.tracking.run_name is None and override_str:
        # A name that says what differs; MLflow's random names repeat once train() seeded `random`.
        tags["mlflow.runName"] = override_str[:200]

    config_tree = tracking.redact_tree(OmegaConf.to_container(raw, resolve=True))
    overrides_list = [tracking.redact(o) for o in overrides]
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config_tree)))

    # Params are the composed config as `dvc exp run -S` would reproduce it (project paths), not the job's.
    with tracking.start_run(cfg, parent_run_id=parent, tags=tags) as run:
        tracking.retry(mlflow.log_dict, config_tree, "config/config.yaml")
        tracking.retry(mlflow.log_dict, {"overrides": overrides_list, "command": override_str}, "config/overrides.yaml")
        write_json(job_cfg.paths.run_info, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
        trained = train(job_cfg)
        result = evaluate(job_cfg)
        value = objective(trained.history, result.metrics, cfg)
        tracking.log_metrics({"objective": value})
    log.info("run %s: test_accuracy %.4f (%s)", run.info.run_id, result.metrics["test_accuracy"], override_str or "defaults")
    return value


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(raw: DictConfig) -> float:
    try:
        return run_job(raw)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
