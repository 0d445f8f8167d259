"""Models in MLflow: the trained model logged as the run's one LoggedModel (a pyfunc that serves images as
``pipeline.predict`` prepares them), and its Keras network loaded back by URI.

Consumes: the ``.keras`` file the training saved, one example input (the array shape the model takes), the
dataset's class names and preparation, and a loader (a .keras path -> the Keras model: this package never imports
TensorFlow itself). Produces: a LoggedModel (``models:/<model_id>``), the :class:`~pipeline.tracking.served.
ServedModel` pyfunc, servable by ``mlflow models serve`` (docs/serving.md), with the ``.keras`` file as its
artifact (its bytes, so its SHA-256 is the run's ``model_sha256``) and the ``pipeline`` package as its code;
:func:`load_keras_model` gives any model URI (``models:/mnist-cnn@champion``, ``runs:/<id>/model``) back as a Keras
model, or a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.core.errors import DataError
from pipeline.core.redact import redact
from pipeline.tracking.store import retry

if TYPE_CHECKING:
    from pipeline.config import DatasetConfig

MODEL_NAME = "model"


def model_requirements() -> list[str]:
    """What serving the model needs, from the installed versions: MLflow's own inference of this
    list reloads the model in a subprocess and costs 6-8 s a run here."""
    from importlib import metadata

    reqs = []
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "scipy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(
    model_path: Path | str, example: np.ndarray, params: dict[str, str], tags: dict[str, str], *,
    dataset: DatasetConfig, loader: Callable[[str], Any],
) -> str:  # fmt: skip
    """Log the trained model (the ``.keras`` file at ``model_path``, whose SHA-256 is ``tags["model_sha256"]``) as
    the active run's one LoggedModel, a :class:`~pipeline.tracking.served.ServedModel` pyfunc taking images of
    ``dataset`` and arrays shaped like ``example``; return its model_id. ``loader`` loads the file where the model
    is served (:func:`pipeline.model.inference.load_predictor`).

    The LoggedModel is created first, by itself (a retry finds it rather than making a second), then
    ``log_model`` fills it with the model's files, which is safe to repeat.
    """
    import pipeline
    from pipeline.data.imageprep import ImageSpec
    from pipeline.tracking.served import KERAS_ARTIFACT, MAX_BATCH, ServedModel

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
        tags=tags, model_type="pyfunc", recover=recover,
    )  # fmt: skip
    spec, shape = ImageSpec.of(dataset), tuple(int(d) for d in example.shape[1:])
    served = ServedModel(loader, list(dataset.classes), spec, tags["model_sha256"], shape)
    metadata = {  # the contract, where a reader of the MLmodel file finds it (docs/serving.md)
        "inputs": {
            "image": {"instance": {"image": "<base64 PNG or JPEG>"}, "prepare": spec.prepare.value},
            "array": {
                "shape": [-1, *shape],
                "dtype": str(example.dtype),
                "range": [0.0, 1.0],
                "instance": "JSON numbers, or {'npy': '<base64 .npy file of one array>'}",
            },
            "max_batch": MAX_BATCH,
        },
        "outputs": ["label", "probability", "runner_up", "runner_up_probability"],
        "classes": list(dataset.classes),
    }
    retry(
        mlflow.pyfunc.log_model, name=MODEL_NAME, python_model=served,
        artifacts={KERAS_ARTIFACT: str(model_path)}, code_paths=[str(Path(pipeline.__file__).parent)],
        pip_requirements=model_requirements(), metadata=metadata, model_id=logged.model_id,
    )  # fmt: skip
    return logged.model_id


def load_keras_model(uri: str, store: str | None = None) -> Any:
    """The Keras model behind a model URI, for those who want the raw network (predict, the gate, the tests):
    the pyfunc's own network, loaded as serving loads it (its file's SHA-256 checked), or a model logged with the
    Keras flavour by an earlier version of the pipeline. ``store``: the tracking URI to look it up in (default:
    the active one)."""
    if store is not None:
        mlflow.set_tracking_uri(store)
    try:
        if "keras" in mlflow.models.get_model_info(uri).flavors:
            return mlflow.keras.load_model(uri)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().predictor.model
    except (MlflowException, OSError, DataError) as exc:
        where = redact(store or mlflow.get_tracking_uri())
        raise DataError(
            f"{uri}: cannot load it from {where} ({str(exc).splitlines()[0][:200]}); train one first (make run), "
            "or give --model"
        ) from None
