"""Portable forms of a trained Keras model: a TF-Lite (LiteRT) flatbuffer and an ONNX graph, and their runtimes.

Consumes: a Keras model (or a ``.keras`` file). Produces: ``model.tflite`` (Keras' ``model.export(format=
"litert")``, TensorFlow's converter) and ``model.onnx`` (``model.export(format="onnx")``, through tf2onnx: the
``export`` extra, ``pip install -e '.[export]'``), each taking ``images``, float32 ``(n, *input shape)`` in
[0, 1] (MNIST: ``(n, 28, 28, 1)``, any n), and giving the softmax ``(n, classes)``; :func:`predict_tflite` and
:func:`predict_onnx` run them with their own runtimes (LiteRT's ``ai_edge_litert``, else TensorFlow's
``tf.lite``; ONNX Runtime).
``tests/integration/test_export.py`` checks both against Keras on 1,000 MNIST test images (docs/export.md).

The evaluate stage exports each model the registry gate promotes (``registry.export``) and logs the files with
its version (:mod:`pipeline.tracking.exports`). Run: ``python -m pipeline.model.export MODEL.keras FOLDER
[tflite] [onnx]`` writes ``FOLDER/model.<format>`` and prints each path.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path
from pipeline.model.runtime import import_tensorflow

if TYPE_CHECKING:
    import keras

#: format -> the file it is written to (and logged as, under ``export/``).
FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
#: The packages the ONNX export and its runtime need (the ``export`` extra).
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
#: The exported graphs' input name (``session.run(None, {"images": x})``, LiteRT's ``serving_default_images``).
INPUT_NAME = "images"


def onnx_available() -> bool:
    """Whether the ONNX export can run here: tf2onnx, onnx and onnxruntime installed."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)


def _signature(model: keras.Model) -> list:
    """One float32 input named :data:`INPUT_NAME`, of any batch size: the same contract in both formats."""
    tf = import_tensorflow()
    return [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)]


def export_tflite(model: keras.Model, path: Path | str) -> Path:
    """Write ``model`` as a TF-Lite (LiteRT) flatbuffer at ``path`` (``.tflite``), float32, no quantisation."""
    path = Path(path)
    with atomic_path(path) as tmp:
        model.export(str(tmp), format="litert", verbose=False, input_signature=_signature(model))
    return path


def export_onnx(model: keras.Model, path: Path | str) -> Path:
    """Write ``model`` as an ONNX graph at ``path`` (``.onnx``; Keras' exporter, through tf2onnx)."""
    if not onnx_available():
        raise UserError(
            f"the ONNX export needs {', '.join(ONNX_PACKAGES)}: pip install -e '.[export]' "
            "(or drop onnx from registry.export)"
        )
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Keras' numpy-2 shim for tf2onnx reads np.object, which NumPy warns about; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
        model.export(str(tmp), format="onnx", verbose=False, input_signature=_signature(model))
    return path


EXPORTERS = {"tflite": export_tflite, "onnx": export_onnx}


def as_float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32: itself, or for a mixed-precision model (``train.precision``) a float32
    clone with the same weights (which mixed precision keeps in float32). TensorFlow's TF-Lite converter
    refuses bfloat16 convolutions and matrix products; the file then matches Keras' float32 forward pass of
    those weights, not the bfloat16 one."""
    import_tensorflow()
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def float32_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    clone = keras.models.clone_model(model, clone_function=float32_layer)
    clone.set_weights(model.get_weights())
    return clone


def export(model: keras.Model, folder: Path | str, formats: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Write each of ``formats`` (:data:`FILES`' keys) of ``model`` in float32 (:func:`as_float32`) into
    ``folder``; return format -> file."""
    unknown = sorted(set(formats) - set(FILES))
    if unknown:
        raise UserError(f"export formats {unknown}: unknown; allowed: {', '.join(FILES)}")
    model = as_float32(model)
    return {fmt: EXPORTERS[fmt](model, Path(folder) / FILES[fmt]) for fmt in formats}


def predict_tflite(path: Path | str, x: np.ndarray) -> np.ndarray:
    """The ``.tflite`` file's outputs for ``x``, one invocation for the whole batch (LiteRT's interpreter,
    ``ai_edge_litert``; TensorFlow's ``tf.lite.Interpreter`` where it is not installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = import_tensorflow().lite.Interpreter
    x = np.ascontiguousarray(x, dtype=np.float32)
    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))  # the file's batch is 1; any size runs
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(out["index"]))  # a copy: the interpreter reuses its buffers


def predict_onnx(path: Path | str, x: np.ndarray) -> np.ndarray:
    """The ``.onnx`` file's outputs for ``x`` (ONNX Runtime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})
    return np.asarray(output)


PREDICTORS = {"tflite": predict_tflite, "onnx": predict_onnx}


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.errors import fail
    from pipeline.model.score import load_model

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        fail(f"usage: python -m pipeline.model.export MODEL.keras FOLDER [{'] ['.join(FILES)}]")
    try:
        files = export(load_model(args[0]), args[1], args[2:] or list(FILES))
    except UserError as exc:
        fail(str(exc))
    for path in files.values():
        print(path)


if __name__ == "__main__":
    main()
