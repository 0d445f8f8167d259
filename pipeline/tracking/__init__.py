"""Tracking and the registry: the only package that imports MLflow.

- :mod:`~pipeline.tracking.store`: where the store is, and :func:`retry` around every call to it;
- :mod:`~pipeline.tracking.runs`: runs that end FINISHED, FAILED or KILLED, their tags and params, and the run
  records (:class:`RunRecord`) that link DVC's outputs to them;
- :mod:`~pipeline.tracking.orphans`: who owns a run in progress; a dead owner's run is marked KILLED;
- :mod:`~pipeline.tracking.results`: metrics, datasets, figures and files for the active run;
- :mod:`~pipeline.tracking.models`: logging the trained model and loading a model by URI;
- :mod:`~pipeline.tracking.gate` (pure) and :mod:`~pipeline.tracking.registry`: the champion gate, safe across
  machines; :mod:`~pipeline.tracking.card` (pure): a registered version's model card;
- :mod:`~pipeline.tracking.exports`: a champion's exported files (TF-Lite, ONNX) logged with its version;
- :mod:`~pipeline.tracking.sweeps`: a sweep's parent run and its table of results;
- :mod:`~pipeline.tracking.served`: the served model, a pyfunc that prepares images as predict does;
  :mod:`~pipeline.tracking.scoring`: ``make serve``'s web app, MLflow's scoring server decoding a request once;
- :mod:`~pipeline.tracking.cli`: ``python -m pipeline.tracking uri|champion|ui|serve``.

A new tracking feature goes in the module of its kind, and is called from a stage (``pipeline.stages``), never
from the model or data packages. This module re-exports what the stages use, so they read ``tracking.X``; lazily, so that importing it costs
nothing until a name is used (MLflow's import is 1.5 s: the evaluate stage forks its scoring child first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.tracking.exports import exported_formats, log_exports
    from pipeline.tracking.models import MODEL_NAME, load_keras_model, log_model
    from pipeline.tracking.orphans import reap_orphans, record_add, record_remove
    from pipeline.tracking.records import RunRecord, verify_model_file
    from pipeline.tracking.results import MetricsLogger, log_artifact, log_dataset, log_dict, log_figure, log_metrics
    from pipeline.tracking.runs import (
        Terminated,
        active,
        config_params,
        evaluation_run,
        record_of,
        run_tags,
        set_tags,
        start_run,
    )
    from pipeline.tracking.store import (
        artifact_location,
        is_server,
        project_root,
        retry,
        running_dir,
        setup,
        tracking_uri,
    )

#: name -> the submodule that defines it.
_WHERE = {
    "log_exports": "exports",
    "exported_formats": "exports",
    "MODEL_NAME": "models",
    "load_keras_model": "models",
    "log_model": "models",
    "reap_orphans": "orphans",
    "record_add": "orphans",
    "record_remove": "orphans",
    "MetricsLogger": "results",
    "log_artifact": "results",
    "log_dataset": "results",
    "log_dict": "results",
    "log_figure": "results",
    "log_metrics": "results",
    "RunRecord": "records",
    "verify_model_file": "records",
    "Terminated": "runs",
    "active": "runs",
    "config_params": "runs",
    "evaluation_run": "runs",
    "record_of": "runs",
    "run_tags": "runs",
    "set_tags": "runs",
    "start_run": "runs",
    "artifact_location": "store",
    "is_server": "store",
    "project_root": "store",
    "retry": "store",
    "running_dir": "store",
    "setup": "store",
    "tracking_uri": "store",
}
__all__ = [
    "MODEL_NAME",
    "MetricsLogger",
    "RunRecord",
    "Terminated",
    "active",
    "artifact_location",
    "config_params",
    "evaluation_run",
    "exported_formats",
    "is_server",
    "load_keras_model",
    "log_artifact",
    "log_dataset",
    "log_dict",
    "log_exports",
    "log_figure",
    "log_metrics",
    "log_model",
    "project_root",
    "reap_orphans",
    "record_add",
    "record_of",
    "record_remove",
    "retry",
    "run_tags",
    "running_dir",
    "set_tags",
    "setup",
    "start_run",
    "tracking_uri",
    "verify_model_file",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.tracking.{_WHERE[name]}"), name)
    globals()[name] = value  # once
    return value
