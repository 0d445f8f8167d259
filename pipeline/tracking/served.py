"""The served model: a pyfunc that prepares a person's image as ``pipeline.predict`` does and answers its class.

Consumes, in its ``predict`` (``mlflow models serve``'s ``/invocations``, ``mlflow models predict``,
``mlflow.pyfunc.load_model(uri).predict``), a list of instances, all of one kind:

- images: ``{"image": "<a PNG or JPEG file, base64>"}`` each, prepared by
  :func:`pipeline.data.imageprep.prepare_image`, the function ``pipeline.predict`` runs;
- arrays: the network's own input, each ``(28, 28, 1)`` (the logged shape, from the training example) float32 in
  [0, 1]: JSON numbers (for one channel also ``(28, 28)``, without the channel's one-number lists: about 2.5
  times quicker to parse), or ``{"npy": "<a .npy file, base64>"}`` (``numpy.save``: far cheaper to parse than
  JSON numbers), or, in Python, float32 NumPy arrays (``list(x)`` of a batch). The costs are measured by
  ``benchmarks/serving.py`` (docs/serving.md, "Speed").

REST: ``{"inputs": [<instance>, ...]}``. The type hint ``list[Any]`` gives the model MLflow's type-hint signature,
so the server hands the JSON list over as it is and a request without ``inputs`` gets MLflow's one-line error.
Produces, per instance, ``{"label", "probability", "runner_up", "runner_up_probability"}`` (labels: the dataset's
class names); REST: ``{"predictions": [...]}``. A bad request is a :class:`RequestError`: HTTP 400 with one short
line naming the problem and never the input. docs/serving.md is the contract;
``tests/integration/test_serve_contract.py`` holds it against a real ``mlflow models serve``.

The network comes from the model's artifact, the exact ``.keras`` file the training saved (its SHA-256 checked
against the one recorded at logging), through the loader given at logging: the training stage passes
:func:`pipeline.model.inference.load_predictor`, so TensorFlow is imported by ``pipeline.model`` alone and this
package stays free of it (``tests/unit/test_imports.py``). The ``pipeline`` package travels with the model
(``code_paths``), so a served model runs the code it was trained with, wherever it is served from.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from pipeline.core.errors import DataError
from pipeline.core.files import sha256_file
from pipeline.data.imageprep import ImageSpec, prepare_image

#: The artifact that holds the network: the training's own .keras file.
KERAS_ARTIFACT = "keras_model"
#: The most images one request may hold (the server holds a request's decoded images in memory at once).
MAX_BATCH = 1000
IMAGE = "image"  # an image instance's one key: a PNG or JPEG file, base64
NPY = "npy"  # an array instance's one key: a .npy file (numpy.save) of one float32 (28, 28, 1) array, base64


class RequestError(MlflowException):
    """A request's problem in one short line: HTTP 400 (``INVALID_PARAMETER_VALUE``) from ``mlflow models serve``.

    MLflow's scoring server rewrites the message of an MlflowException raised by ``predict`` to ``Failed to
    predict data '<the whole input>'. Error: ...``; this one keeps its own message, so no input is echoed
    (a 28x28 array is 5 KB of numbers, a photo megabytes of base64).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._short

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_short"):  # the first assignment, MLflow's own __init__: later ones carry the input
            self._short = value


class ServedModel(PythonModel):
    """The pyfunc of :mod:`pipeline.tracking.served`: ``loader`` (a .keras path -> an object with ``.model``, the
    Keras model, and ``.forward``, its forward pass: :func:`pipeline.model.inference.load_predictor`) is called in
    :meth:`load_context`; ``classes`` names the outputs; ``spec`` is the dataset's image preparation;
    ``model_sha256`` the .keras file's content, checked before it is loaded."""

    def __init__(
        self, loader: Callable[[str], Any], classes: list[str], spec: ImageSpec, model_sha256: str,
        input_shape: tuple[int, ...],
    ) -> None:  # fmt: skip
        self.loader = loader
        self.classes = list(classes)
        self.spec = spec
        self.model_sha256 = model_sha256
        self.input_shape = tuple(int(d) for d in input_shape)  # one image: (28, 28, 1)
        # What ``loader`` gives, in load_context: ``.model`` (Keras) and ``.forward`` (a batch -> probabilities).
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        path = context.artifacts[KERAS_ARTIFACT]
        if (got := sha256_file(path)) != self.model_sha256:
            raise DataError(
                f"{path}: SHA-256 {got[:16]}... is not the logged model's {self.model_sha256[:16]}...: the file changed"
            )
        self.predictor = self.loader(path)
        # TensorFlow, Keras and MLflow leave a large heap of long-lived objects, and every full collection walks
        # them all: parsing a 100-image JSON request (81,000 small lists) sets off several. Freezing moves what is
        # alive now out of the collector's reach (Python's gc.freeze, meant for such long-lived heaps): the JSON
        # batches' throughput before and after is in docs/serving.md, "Speed". Only cycles among these objects, were they to
        # become garbage later, are never freed.
        gc.collect()
        gc.freeze()

    def predict(
        self, context: Any, model_input: list[Any], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The answer per instance of ``model_input`` (see the module); a bad input raises :class:`RequestError`."""
        try:
            x = self.batch(model_input)
        except RequestError:
            raise
        except Exception as exc:  # whatever else a request's content raises is the request's problem, said short
            raise RequestError(f"inputs: cannot be read ({type(exc).__name__})") from None
        probs = np.asarray(self.predictor.forward(x), dtype=np.float64)
        top = np.argsort(probs, axis=1)[:, ::-1][:, :2]
        return [
            {
                "label": self.classes[first],
                "probability": float(row[first]),
                "runner_up": self.classes[second],
                "runner_up_probability": float(row[second]),
            }
            for row, (first, second) in zip(probs, top, strict=True)
        ]

    def batch(self, instances: list[Any]) -> np.ndarray:
        """The network's input for a request's instances: files (images prepared, .npy arrays read), or arrays of
        numbers (checked)."""
        if not 1 <= len(instances) <= MAX_BATCH:
            raise RequestError(f"inputs: {len(instances)} instances, expected 1 to {MAX_BATCH}")
        files = [isinstance(item, dict) for item in instances]
        if all(files):
            return np.stack([self.file(item, f"inputs[{i}]") for i, item in enumerate(instances)])
        if any(files):
            raise RequestError("inputs: files and arrays of numbers mixed; send one kind per request")
        return self.array(instances)

    def file(self, instance: dict[str, Any], name: str) -> np.ndarray:
        """One ``{"image": ...}`` (prepared) or ``{"npy": ...}`` (read and checked) instance."""
        if len(instance) != 1 or not set(instance) <= {IMAGE, NPY}:
            raise RequestError(f'{name}: one key expected, "{IMAGE}" (a PNG or JPEG file) or "{NPY}" (a .npy file)')
        key, data = next(iter(instance.items()))
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{name}: {key} is not base64") from None
        if not isinstance(data, bytes):
            raise RequestError(f"{name}: {key} takes a base64 string")
        if key == NPY:
            return self.checked(_read_npy(data, name, self.input_shape), name)[0]
        try:
            return prepare_image(data, self.spec, name=name)
        except DataError as exc:
            raise RequestError(str(exc)) from None

    @property
    def expected(self) -> str:
        return f"(n, {', '.join(map(str, self.input_shape))}) float32 in [0, 1]"

    def array(self, instances: list[Any]) -> np.ndarray:
        if wrong := {
            str(item.dtype) for item in instances if isinstance(item, np.ndarray) and item.dtype != np.float32
        }:
            scale = " (scale 0-255 pixels by 1/255)" if any(np.dtype(d).kind in "iu" for d in wrong) else ""
            raise RequestError(f"inputs: dtype {sorted(wrong)[0]}, expected {self.expected}{scale}")
        try:
            x = np.asarray(instances)
        except ValueError:
            raise RequestError(f"inputs: not a rectangular array; expected {self.expected}") from None
        if x.dtype.kind not in "iuf":  # JSON numbers only: strings, booleans, nulls are refused
            raise RequestError(f"inputs: the array holds {_kind(x)}, expected {self.expected}")
        if self.input_shape[-1:] == (1,) and x.shape[1:] == self.input_shape[:-1]:
            x = x[..., None]  # one channel, sent without its axis
        return self.checked(x.astype(np.float32, copy=False), "inputs")

    def checked(self, x: np.ndarray, name: str) -> np.ndarray:
        """``x`` (float32), if it has the logged shape and its values are in [0, 1]."""
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            raise RequestError(f"{name}: shape {x.shape}, expected {self.expected}")
        if not np.isfinite(x).all():
            raise RequestError(f"{name}: values that are not finite numbers; expected {self.expected}")
        if x.min() < 0 or x.max() > 1:
            raise RequestError(f"{name}: values outside [0, 1]: scale 0-255 pixels by 1/255; expected {self.expected}")
        return x


def _read_npy(data: bytes, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A .npy file of one float32 array of ``shape``, as a batch of one; its header is checked before any data is
    read (a header may declare any size), and nothing is unpickled."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream)
        else:
            header = np.lib.format.read_array_header_2_0(stream)
    except ValueError:
        raise RequestError(f"{name}: npy is not a .npy file (numpy.save)") from None
    got_shape, fortran, dtype = header
    if dtype != np.dtype("<f4") or tuple(got_shape) != shape:
        raise RequestError(f"{name}: npy holds {dtype} {tuple(got_shape)}, expected float32 {shape}")
    body = stream.read()
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise RequestError(f"{name}: npy's data does not match its header")
    return np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")[None]


def _kind(x: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "b": "booleans"}.get(x.dtype.kind, "values that are not numbers")
