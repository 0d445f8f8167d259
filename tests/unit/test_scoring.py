"""``make serve``'s app (``pipeline.tracking.scoring``) against MLflow's stock scoring app, on the served pyfunc with
a stand-in network (no TensorFlow): the same requests get the same answers, status and body, from both, and a JSON
body is decoded once. The same app behind real uvicorn workers is tests/integration/test_serve_contract.py's."""

from __future__ import annotations

import gc
import json
import threading
from typing import ClassVar

import mlflow.pyfunc
import pytest
from fastapi.testclient import TestClient
from mlflow.pyfunc import scoring_server

from pipeline.core.files import sha256_file
from pipeline.data.imageprep import ImageSpec
from pipeline.tracking import scoring
from pipeline.tracking.served import KERAS_ARTIFACT, ServedModel
from tests.unit.test_served import Network, images


class Recording(Network):
    """The stand-in network, also recording whether the garbage collector was on at each forward pass."""

    collector: ClassVar[list[bool]] = []

    def forward(self, x):
        Recording.collector.append(gc.isenabled())
        return super().forward(x)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The served pyfunc saved as MLflow saves a logged one (its type-hint signature included): its folder."""
    folder = tmp_path_factory.mktemp("scoring")
    weights = folder / "model.keras"
    weights.write_bytes(b"the network's bytes")
    python_model = ServedModel(Recording, [str(i) for i in range(10)], ImageSpec(), sha256_file(weights), (28, 28, 1))
    mlflow.pyfunc.save_model(
        folder / "model", python_model=python_model, artifacts={KERAS_ARTIFACT: str(weights)}, pip_requirements=[]
    )
    yield folder / "model"
    gc.unfreeze()  # loading froze this worker's heap (ServedModel.load_context)


@pytest.fixture(scope="module")
def model(saved):
    return mlflow.pyfunc.load_model(str(saved))


@pytest.fixture(scope="module")
def clients(model):
    return TestClient(scoring.app_for(model)), TestClient(scoring_server.init(model))


JSON = "application/json"
X = images(3)
REQUESTS = {
    "arrays": (JSON, json.dumps({"inputs": X.tolist()})),
    "arrays without the channel's axis": (JSON, json.dumps({"inputs": X[..., 0].tolist()})),
    "with a charset": (JSON + "; charset=utf-8", json.dumps({"inputs": X.tolist()})),
    "0-255 pixels": (JSON, json.dumps({"inputs": (X * 255).tolist()})),
    "a wrong shape": (JSON, json.dumps({"inputs": X[:, :, :27].tolist()})),
    "strings for numbers": (JSON, json.dumps({"inputs": [[["a"] * 28] * 28]})),
    "no inputs key": (JSON, json.dumps({"instances": X.tolist()})),
    "NaN, which only Python's json reads": (JSON, '{"inputs": [[[NaN]]]}'),
    "not JSON": (JSON, "{not json"),
    "a list body": (JSON, json.dumps([1, 2])),
    "not UTF-8": (JSON, b'{"inputs": "\xff"}'),
    "another charset": (JSON + "; charset=latin-1", json.dumps({"inputs": X.tolist()})),
    "another content type": ("text/plain", json.dumps({"inputs": X.tolist()})),
}


@pytest.mark.parametrize("case", REQUESTS)
def test_each_request_gets_the_stock_apps_answer(clients, case):
    ours, stock = clients
    content_type, body = REQUESTS[case]
    got, want = (c.post("/invocations", content=body, headers={"content-type": content_type}) for c in (ours, stock))
    assert (got.status_code, got.text) == (want.status_code, want.text)


def test_a_batch_answers_its_classes_and_the_other_routes_stay_mlflows(clients):
    ours, stock = clients
    answer = ours.post("/invocations", json={"inputs": X.tolist()}).json()["predictions"]
    assert [a["label"] for a in answer] == ["3", "4", "5"]  # Network: the brightest row, 3 + i
    for route in ("/ping", "/health", "/version"):
        got, want = ours.get(route), stock.get(route)
        assert (got.status_code, got.text) == (want.status_code, want.text)
    assert [r.path for r in ours.app.routes if r.path == "/invocations"] == ["/invocations"]


def test_a_json_body_is_decoded_once(clients, monkeypatch):
    """The stock app decodes it twice with json.loads; this one once, with orjson, and MLflow's decoding never
    runs."""
    ours, stock = clients
    calls: list[int] = []
    real = scoring_server.json.loads
    monkeypatch.setattr(scoring_server.json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    body = json.dumps({"inputs": X.tolist()})
    stock.post("/invocations", content=body, headers={"content-type": JSON})
    assert len(calls) == 2
    calls.clear()
    assert ours.post("/invocations", content=body, headers={"content-type": JSON}).status_code == 200
    assert calls == []


def test_the_collector_is_paused_while_a_request_is_handled_and_resumes_after(clients):
    ours, stock = clients
    assert gc.isenabled()
    Recording.collector.clear()
    for client in (ours, stock):
        assert client.post("/invocations", json={"inputs": X.tolist()}).status_code == 200
    assert Recording.collector == [False, True]  # ours paused it, the stock app did not
    assert gc.isenabled()


def test_the_pause_is_shared_by_threads_and_restores_what_it_found():
    pause, inside, release = scoring.CollectorPause(), threading.Event(), threading.Event()

    def request():
        with pause:
            inside.set()
            release.wait(10)

    other = threading.Thread(target=request)
    other.start()
    inside.wait(10)
    with pause:
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other request is still inside
    release.set()
    other.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with pause:
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()


def test_the_app_serves_the_model_its_variable_names_and_refuses_without_one(saved, monkeypatch):
    monkeypatch.setenv(scoring.MODEL_ENV, str(saved))
    answer = TestClient(scoring.create_app()).post("/invocations", json={"inputs": X[::-1].tolist()})
    assert [a["label"] for a in answer.json()["predictions"]] == ["5", "4", "3"]
    monkeypatch.delenv(scoring.MODEL_ENV)
    with pytest.raises(SystemExit, match=scoring.MODEL_ENV):
        scoring.create_app()
