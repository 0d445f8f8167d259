"""The served pyfunc's own logic on synthetic arrays, without TensorFlow: the network is a stand-in whose class is a
function of the image (``pipeline.tracking.served.ServedModel`` takes any loader), so these run in milliseconds.
The same model behind a real ``mlflow models serve`` is tests/integration/test_serve_contract.py's."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.core.files import sha256_file
from pipeline.data.imageprep import ImageSpec
from pipeline.tracking.served import KERAS_ARTIFACT, RequestError, ServedModel


class Network:
    """Ten classes; the answer is the image's brightest row, mod 10, so a shuffled or misread input answers
    differently."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x)
        rows = x.reshape(len(x), x.shape[1], -1).sum(axis=2).argmax(axis=1) % 10
        probs = np.full((len(x), 10), 0.01)
        probs[np.arange(len(x)), rows] = 0.91
        return probs


@pytest.fixture(autouse=True)
def _unfrozen():
    """Loading freezes the heap (gc.freeze): each test gives this worker's heap back to the collector."""
    yield
    gc.unfreeze()


def served(tmp_path: Path) -> ServedModel:
    weights = tmp_path / "model.keras"
    weights.write_bytes(b"the network's bytes")
    model = ServedModel(Network, [str(i) for i in range(10)], ImageSpec(), sha256_file(weights), (28, 28, 1))
    model.load_context(SimpleNamespace(artifacts={KERAS_ARTIFACT: str(weights)}))
    return model


def images(n: int) -> np.ndarray:
    x = np.zeros((n, 28, 28, 1), np.float32)
    for i in range(n):
        x[i, 3 + i, :, 0] = 1.0  # the brightest row is 3 + i
    return x


def test_json_arrays_with_or_without_the_one_channel_axis_answer_alike(tmp_path):
    model, x = served(tmp_path), images(5)
    with_axis = model.predict(None, json.loads(json.dumps(x.tolist())))
    without = model.predict(None, json.loads(json.dumps(x[..., 0].tolist())))
    assert with_axis == without
    assert [a["label"] for a in with_axis] == [str((3 + i) % 10) for i in range(5)]
    assert all(seen.shape == (5, 28, 28, 1) and seen.dtype == np.float32 for seen in model.predictor.seen)


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        (np.zeros((2, 28, 27)).tolist(), r"shape \(2, 28, 27\), expected \(n, 28, 28, 1\)"),
        (np.zeros((2, 28, 28, 3)).tolist(), r"shape \(2, 28, 28, 3\), expected \(n, 28, 28, 1\)"),
        ((np.ones((1, 28, 28)) * 255).tolist(), r"values outside \[0, 1\]: scale 0-255 pixels by 1/255"),
    ],
)
def test_an_array_of_another_shape_or_scale_is_refused_naming_the_expected_one(tmp_path, instances, message):
    with pytest.raises(RequestError, match=message):
        served(tmp_path).predict(None, instances)


def test_loading_checks_the_file_and_freezes_the_heap_the_network_left(tmp_path):
    """After loading, what is alive is out of the collector's reach (gc.freeze), so the full collections a large
    JSON request sets off do not walk TensorFlow's objects; a file that is not the logged one is refused."""
    gc.unfreeze()
    try:
        served(tmp_path)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    weights = tmp_path / "model.keras"
    model = ServedModel(Network, ["0", "1"], ImageSpec(), "0" * 64, (28, 28, 1))
    with pytest.raises(DataError, match=r"model.keras: SHA-256 .* is not the logged model's 0000000000000000"):
        model.load_context(SimpleNamespace(artifacts={KERAS_ARTIFACT: str(weights)}))
    assert model.predictor is None
