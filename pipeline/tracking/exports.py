"""A champion's exported files in MLflow: artifacts of its evaluation run, and tags of its registry version.

Consumes: the files :mod:`pipeline.model.export` wrote (format -> path), the evaluation run's id and the
registered version the gate promoted. Produces: each file as the run's artifact ``export/<file name>``
(``export/model.tflite``, ``export/model.onnx``) and, on the version, the tags ``export.<format>`` (the
artifact's URI, ``runs:/<run id>/export/model.tflite``: ``mlflow.artifacts.download_artifacts`` takes it),
``export.<format>.sha256`` and ``export.<format>.bytes``.

Called by the evaluate stage (:func:`pipeline.stages.evaluate.export_champion`) for the champion only, and only
for the formats its version lacks (:func:`exported_formats`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlflow

from pipeline.core.files import sha256_file
from pipeline.tracking.store import retry

#: The run's artifact folder that holds the exported files.
EXPORT_ARTIFACTS = "export"
#: The version tags' prefix: ``export.<format>``, ``export.<format>.sha256``, ``export.<format>.bytes``.
TAG_PREFIX = "export."


def export_tags(files: Mapping[str, Path | str], run_id: str) -> dict[str, str]:
    """The version tags for ``files`` logged into run ``run_id``: each format's artifact URI, SHA-256 and size."""
    tags = {}
    for fmt, path in files.items():
        path = Path(path)
        tags[f"{TAG_PREFIX}{fmt}"] = f"runs:/{run_id}/{EXPORT_ARTIFACTS}/{path.name}"
        tags[f"{TAG_PREFIX}{fmt}.sha256"] = sha256_file(path)
        tags[f"{TAG_PREFIX}{fmt}.bytes"] = str(path.stat().st_size)
    return tags


def log_exports(files: Mapping[str, Path | str], run_id: str, model_name: str, version: str) -> dict[str, str]:
    """Log ``files`` (format -> path) as artifacts of run ``run_id`` under :data:`EXPORT_ARTIFACTS` and tag
    version ``version`` of the registered model ``model_name`` with :func:`export_tags`; return the tags."""
    client = mlflow.MlflowClient()
    tags = export_tags(files, run_id)  # hashed before upload: the tags name the bytes that were logged
    for path in files.values():
        retry(client.log_artifact, run_id, str(path), EXPORT_ARTIFACTS)
    for key, value in tags.items():
        retry(client.set_model_version_tag, model_name, version, key, value)
    return tags


def exported_formats(model_name: str, version: str) -> set[str]:
    """The formats version ``version`` of ``model_name`` already has files for (its ``export.<format>`` tags)."""
    tags = retry(mlflow.MlflowClient().get_model_version, model_name, version).tags
    return {k[len(TAG_PREFIX) :] for k in tags if k.startswith(TAG_PREFIX) and k.count(".") == 1}
