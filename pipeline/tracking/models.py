"""Models in MLflow: the trained Keras model logged as the run's one LoggedModel, and loaded back by URI.

Consumes: a Keras model object (built elsewhere: this package never imports TensorFlow itself), one example
input and its output (the signature). Produces: a LoggedModel (``models:/<model_id>``) servable by
``mlflow.pyfunc`` and ``mlflow models serve``; :func:`load_keras_model` gives any model URI
(``models:/mnist-cnn@champion``, ``runs:/<id>/model``) back as a Keras model, or a one-line error.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.core.errors import DataError
from pipeline.core.redact import redact
from pipeline.tracking.store import retry

MODEL_NAME = "model"


def model_requirements() -> list[str]:
    """What serving the model needs, from the installed versions: MLflow's own inference of this
    list reloads the model in a subprocess and costs 6-8 s a run here."""
    from importlib import metadata

    reqs = []
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(
    model: Any, example: np.ndarray, output: np.ndarray, params: dict[str, str], tags: dict[str, str] | None = None
) -> str:
    """Log the Keras ``model`` (its signature from ``example`` and the model's ``output`` for it) as the active
    run's one LoggedModel; return its model_id.

    The LoggedModel is created first, by itself (a retry finds it rather than making a second), then
    ``log_model`` fills it with the model's files, which is safe to repeat.
    """
    from mlflow.models import infer_signature

    run = mlflow.active_run()
    assert run is not None, "log_model needs an active run"
    client = mlflow.MlflowClient()

    def recover() -> Any:
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        return next((m for m in found if m.name == MODEL_NAME), None)

    logged = retry(
        mlflow.initialize_logged_model, name=MODEL_NAME, source_run_id=run.info.run_id, params=params,
        tags=tags, model_type="keras", recover=recover,
    )  # fmt: skip
    signature = infer_signature(example, output)
    retry(
        mlflow.keras.log_model, model, name=MODEL_NAME, signature=signature,
        pip_requirements=model_requirements(), model_id=logged.model_id,
    )  # fmt: skip
    return logged.model_id


def load_keras_model(uri: str, store: str | None = None) -> Any:
    """The Keras model behind a model URI (the Keras flavour: it predicts quietly, where the pyfunc wrapper prints
    Keras' progress bar); ``store``: the tracking URI to look it up in (default: the active one)."""
    if store is not None:
        mlflow.set_tracking_uri(store)
    try:
        return mlflow.keras.load_model(uri)
    except (MlflowException, OSError) as exc:
        where = redact(store or mlflow.get_tracking_uri())
        raise DataError(
            f"{uri}: cannot load it from {where} ({str(exc).splitlines()[0][:200]}); train one first (make run), "
            "or give --model"
        ) from None
