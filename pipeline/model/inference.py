"""The served model's network: a saved model and its forward pass, traced once for every batch size.

Consumes: a ``.keras`` file (loaded by :func:`pipeline.model.score.load_model`: ``safe_mode``, a bad file names
itself). Produces: a :class:`Predictor`, the Keras model and a function from a float32 batch to class
probabilities. The served pyfunc (:mod:`pipeline.tracking.served`) calls it per request: a traced
``tf.function`` answers one image in well under the eager call's time (``benchmarks/serving.py`` measures both),
and one trace serves every batch size (its input signature leaves the batch open).

Used by ``pipeline.stages.train``, which hands :func:`load_predictor` to the logged model as its loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.model.runtime import import_tensorflow
from pipeline.model.score import load_model

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Predictor:
    model: keras.Model  # the raw network, for those who want it (tracking.load_keras_model)
    forward: Callable[[np.ndarray], np.ndarray]  # float32 (n, *input shape) -> probabilities (n, classes)


def traced(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s inference-mode forward pass as one traced function for any batch size."""
    tf = import_tensorflow()
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]
    call = tf.function(lambda batch: model(batch, training=False), input_signature=signature)
    return lambda x: np.asarray(call(tf.constant(x, dtype=tf.float32)))


def load_predictor(path: Path | str) -> Predictor:
    """The model in ``path`` and its traced forward pass, traced here (before the first request)."""
    model = load_model(path)
    forward = traced(model)
    forward(np.zeros((1, *model.input_shape[1:]), np.float32))
    return Predictor(model, forward)
