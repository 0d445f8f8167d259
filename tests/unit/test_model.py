"""The seed's model and the scoring arithmetic, in-process on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import compose, validate
from pipeline.evaluate import score
from pipeline.model import SEED_PARAMETERS, build_model


def test_basic_cnn_is_the_seeds_model():
    model = build_model(validate(compose()).model)
    assert model.name == "Basic_CNN"
    assert model.count_params() == SEED_PARAMETERS == 1_676_266
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("Dropout") == 3 and kinds.count("Dense") == 2


class FixedModel:
    """Stands in for a Keras model: returns given probabilities (score only calls predict)."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def predict(self, x, batch_size=None, verbose=0):
        return self.probs[: len(x)]


def test_score_counts_argmax_accuracy_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 3])
    probs = np.full((8, 4), 0.1, np.float32)
    probs[np.arange(8), pred] = 0.7
    result = score(FixedModel(probs), np.zeros((8, 28, 28, 1), np.float32), y, num_classes=4)
    assert result.metrics["test_accuracy"] == 6 / 8 and result.metrics["test_samples"] == 8
    assert result.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
    assert result.per_class_accuracy == [0.5, 1.0, pytest.approx(2 / 3), 1.0]
    assert result.metrics["test_loss"] == pytest.approx(-np.log(0.7) * 6 / 8 - np.log(0.1) * 2 / 8, rel=1e-5)


def test_the_seeds_categorical_metric_is_wrong_on_integer_labels_and_ours_is_right():
    """The seed's trap, pinned: CategoricalAccuracy on integer labels reads nonsense for a perfect model."""
    import keras

    y = np.arange(100) % 10
    probs = np.eye(10, dtype=np.float32)[y]  # a perfect model
    assert score(FixedModel(probs), np.zeros((100, 28, 28, 1), np.float32), y, 10).metrics["test_accuracy"] == 1.0
    assert float(keras.metrics.CategoricalAccuracy()(y[:, None].astype("float32"), probs)) < 0.2
