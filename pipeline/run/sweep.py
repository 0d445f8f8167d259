"""The Hydra callback of every multirun: one MLflow parent run, every job validated first, a table at the end.

Configured in ``conf/config.yaml`` (``hydra.callbacks``), so every ``python -m pipeline.run -m ...`` uses it; a
single run (no ``-m``) creates no parent.

Consumes: the multirun's config (sweep overrides, sweep folder, tracking settings). Produces, through
:class:`pipeline.tracking.sweeps.ParentRun`: a parent run named ``sweep-<time>-<swept keys>``, tagged with the
sweep's overrides and folder, whose id every job reads to become its child; at the end, the children's results
sorted by test accuracy with each one's McNemar p-value against the best, printed and logged on the parent.
Each job also gets the parent's id and the store's URI in its process's environment (``on_job_start``), so a
job on another machine (Hydra's Ray launcher) needs neither the sweep folder nor the same settings.

Before the parent exists, every job of a grid is composed and validated (a bad value in the fifth job stops
the sweep before the first trains), and credentials found in the config are swapped for environment
references, so the ``multirun.yaml`` Hydra saves next holds none.

The parent ends FINISHED when every child finished, FAILED otherwise (KILLED if a job was interrupted); if the
sweep dies on the way (an exception, Ctrl+C, SIGTERM) an exit hook ends it that way rather than leaving it
RUNNING. Only SIGKILL leaves it RUNNING, until the next run against the store reaps it.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from pipeline.core import redact
from pipeline.core.errors import user_errors

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

COLUMNS = ("overrides", "test_accuracy", "test_loss", "train_time_s")


def swept_keys(config: DictConfig) -> list[str]:
    """Keys a sweep varies: sweep overrides on the command line, plus a sweeper's own ``params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [str(o) for o in config.hydra.overrides.task]
    keys = [
        o.get_key_element().lstrip("+~")
        for o in OverridesParser.create().parse_overrides(overrides)
        if o.is_sweep_override()
    ]
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if isinstance(params, DictConfig):
        keys += [str(k) for k in params if str(k) not in keys]
    return keys


def _strings(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a plain tree (lists indexed by position)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    out = []
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, str):
            out.append((dotted, value))
        else:
            out += _strings(value, dotted + ".")
    return out


def externalize_secrets(config: DictConfig) -> None:
    """Replace, in place, each string holding a credential by one that references it in the environment
    (:func:`pipeline.core.redact.externalize`): whatever Hydra saves or logs from this config shows no secret,
    while jobs, which compose their own config, resolve the same value. Values are read unresolved
    (``resolve=False``), so an interpolation is never evaluated here."""
    tree = OmegaConf.to_container(config, resolve=False)
    for key, value in _strings(tree):
        if redact.find_secrets(value):
            with read_write(config), open_dict(config):
                OmegaConf.update(config, key, redact.externalize(value), merge=False)


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """Each job of a grid sweep, as its list of overrides: the cartesian product of every sweep override's
    values, in the order Hydra's basic sweeper runs them (the first key varies slowest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*choices)]


def validate_jobs(config: DictConfig) -> list[Config] | None:
    """Compose and validate each job of a grid sweep (Hydra's basic sweeper) before any job runs, so a bad
    value in the fifth job stops the sweep before the first one trains; all bad jobs are listed at once.
    Returns the jobs' configs; None for other sweepers (Optuna), which choose values as they go and are
    validated job by job."""
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.config import validate
    from pipeline.core.errors import ConfigError

    if "BasicSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_") or ""):
        return None
    loader = GlobalHydra.instance().config_loader()
    errors, jobs = [], []
    for job in job_overrides([str(o) for o in config.hydra.overrides.task]):
        job_cfg = loader.load_sweep_config(config, job)
        task = OmegaConf.masked_copy(job_cfg, [str(k) for k in job_cfg if k != "hydra"])
        try:
            jobs.append(validate(task, source=f"job ({' '.join(job)})"))
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(
            f"{len(errors)} job(s) of the sweep have bad config; nothing was run:\n  " + "\n  ".join(errors)
        )
    return jobs


def add_significance(rows: list[dict[str, Any]], load: Callable[[str], tuple[np.ndarray, np.ndarray] | None]) -> None:
    """Each row's McNemar p-value against the best job, on the same test images (``p_vs_best``): which
    differences in the table are real. ``load(run_id)`` gives a job's (predicted classes, labels), or None."""
    from pipeline.tracking.gate import mcnemar
    from pipeline.tracking.sweeps import is_number

    scored = [r for r in rows if is_number(r["test_accuracy"])]
    best = load(scored[0]["run_id"]) if scored else None
    for row in rows:
        row["p_vs_best"] = None
        if best is None or row is scored[0] or row not in scored:
            continue
        other = load(row["run_id"])
        if other is not None and np.array_equal(other[1], best[1]):  # the same test set
            row["p_vs_best"] = mcnemar(best[0] == best[1], other[0] == other[1])[2]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(COLUMNS)
    if any(r["val_accuracy"] is not None for r in rows):
        cols.append("val_accuracy")
    if any(r.get("p_vs_best") is not None for r in rows):
        cols.append("p_vs_best")
    return [*cols, "status", "run_id"]


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return {"train_time_s": f"{v:.2f}", "p_vs_best": f"{v:.3g}"}.get(key, f"{v:.4f}")
    return str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (tabulate's pipe format)."""
    from tabulate import tabulate

    cols = columns(rows)
    cells = [[_fmt(c, r[c]) for c in cols] for r in rows]
    align = ["left" if c in ("overrides", "status", "run_id") else "right" for c in cols]
    return tabulate(cells, headers=cols, tablefmt="pipe", disable_numparse=True, colalign=align)


def format_csv(rows: list[dict[str, Any]]) -> str:
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    writer.writerows([["" if r[c] is None else r[c] for c in cols] for r in rows])
    return buf.getvalue()


class SweepCallback(Callback):
    """Hydra callback: a parent MLflow run around each multirun (see the module docstring)."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self._parent: Any = None  # pipeline.tracking.sweeps.ParentRun, in the sweep's own process
        self._done = False
        self._signalled = False
        self._previous_sigterm: Any = None
        self._job_env: dict[str, str | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # pickled into each job (joblib, Ray): the ids, not the sweep's MLflow client
        state["_parent"] = None
        return state

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.config import validate
        from pipeline.data.prepare import ensure_data
        from pipeline.tracking.sweeps import ParentRun

        redact.install()
        # Hydra saves this very config as multirun.yaml next: credentials from conf/ leave it first.
        externalize_secrets(config)
        with user_errors():
            task_cfg = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
            cfg = validate(task_cfg, source="config")
            jobs = validate_jobs(config) or [cfg]  # every job of a grid, before any of them starts
            for job in jobs:  # each job's dataset, prepared before parallel jobs would wait for one another
                ensure_data(job.dataset, job.paths.data_cache)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = [str(o) for o in config.hydra.overrides.task]
        keys = swept_keys(config)
        name = "sweep-" + time.strftime("%Y%m%d-%H%M%S") + (f"-{'-'.join(keys)}" if keys else "")
        with user_errors():
            self._parent = ParentRun(cfg)
        self.tracking_uri = self._parent.tracking_uri
        tags = {
            "sweep": "true",
            "sweep_overrides": " ".join(overrides),
            "sweep_keys": ",".join(keys),
            "sweep_dir": str(sweep_dir),
            "hydra_sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_") or ""),
            "hydra_launcher": str(OmegaConf.select(config, "hydra.launcher._target_") or ""),
        }
        self._catch_sigterm()  # before the parent exists: a SIGTERM from here on ends it KILLED
        self.parent_run_id = self._parent.create(name, tags, sweep_dir)
        atexit.register(self._finish_if_running)
        print(f"MLflow parent run {self.parent_run_id} ({name}) in {redact.redact(self.tracking_uri)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish(failed=False)

    # ------------------------------------------------------------------ in each job's process

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Hand the job its parent run and the sweep's store, wherever the launcher runs it.

        Hydra runs this hook in the job's own process (this process, a joblib worker, a Ray task on another
        machine), on a copy of this callback pickled after :meth:`on_multirun_start`: a job learns its parent
        without reading the sweep folder, and logs to the store the parent is in whatever its node's
        environment says (a relative SQLite path, resolved here, would name another store on a Ray node).
        """
        from pipeline.tracking.sweeps import PARENT_RUN_ENV

        if self.parent_run_id is None or self.tracking_uri is None:
            return
        self._job_env = {k: os.environ.get(k) for k in (PARENT_RUN_ENV, "MLFLOW_TRACKING_URI")}
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        for key, value in self._job_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._job_env = {}

    # ------------------------------------------------------------------ ending the parent

    def finish(self, failed: bool, status: str | None = None) -> str | None:
        """Collect the children, print and log the table, end the parent; return its final status."""
        if self._parent is None or self.parent_run_id is None or self._done:
            return None
        self._done = True
        try:
            rows = self._parent.children()
            add_significance(rows, self._parent.predictions)
            table = format_table(rows) if rows else "(no child runs)"
            print(
                f"\nSweep results ({len(rows)} runs, parent {self.parent_run_id}), best test_accuracy first:\n{table}",
                flush=True,
            )
            if any(r["status"] != "FINISHED" for r in rows):
                failed = True
            if failed and status is None and any(r["status"] == "KILLED" for r in rows):
                status = "KILLED"  # a job was interrupted (Ctrl+C, SIGTERM): so was the sweep
            self._parent.log_results(rows, table, format_csv(rows), columns(rows))
        except BaseException:
            failed = True
            raise
        finally:
            final = status or ("FAILED" if failed else "FINISHED")
            self._parent.end(final)
            self._restore_sigterm()
            atexit.unregister(self._finish_if_running)
        return final

    def _finish_if_running(self) -> None:
        """Exit hook: a sweep that did not reach on_multirun_end leaves no RUNNING parent behind."""
        if self._done or self.parent_run_id is None:
            return
        try:
            self.finish(failed=True, status="KILLED" if self._signalled else None)
        except Exception as exc:  # the interpreter is exiting: report, never raise
            print(f"warning: could not end MLflow parent run {self.parent_run_id}: {exc}", file=sys.stderr)

    def _catch_sigterm(self) -> None:
        """SIGTERM unwinds the sweep (so the exit hook runs) instead of killing the process outright."""
        from pipeline.tracking import Terminated

        def handler(signum: int, frame: Any) -> None:
            self._signalled = True
            raise Terminated(f"signal {signum}")

        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                self._previous_sigterm = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            pass

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
