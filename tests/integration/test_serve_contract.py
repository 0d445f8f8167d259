"""The REST contract of the served model (docs/serving.md), against a real ``mlflow models serve`` on 127.0.0.1.

One model trained on the small subset and made champion in a tmp store; ``python -m pipeline.tracking serve``
(what ``make serve`` runs) serves it on a free port for the whole module. Good batches of arrays and of images
(the photo-like images of test_predict.py) answer as the Keras model does on the same preparation; each bad input
is a 4xx with a short message naming the problem and echoing nothing; a few hundred requests, four at a time,
get no 5xx; the documented ``curl`` of a PNG, run exactly as docs/serving.md writes it, gives the right digit.

Run alone: ``pytest -m services tests/integration/test_serve_contract.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.data.formats import load_split
from pipeline.data.imageprep import to_mnist
from pipeline.server.manage import free_port
from tests.conftest import ROOT, config_in, data_cache
from tests.integration.test_predict import make_champion, photo_like

pytestmark = pytest.mark.services

DOCS = ROOT / "docs" / "serving.md"
SHORT = 300  # bytes: the most an error response may take (a message naming the problem, no input echoed)


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``url`` answers 200 (polling a server that is starting, not racing it)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
        time.sleep(0.5)


def post(port: int, payload: object | bytes) -> tuple[int, bytes]:
    """(HTTP status, body) of ``payload`` (JSON-encoded unless bytes) posted to the server's /invocations."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def npy(array: np.ndarray) -> str:
    """One array as a .npy file (numpy.save), base64: the binary form of an array instance."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, mnist_small):
    """The champion served as ``make serve`` serves it: its port, its Keras model, the test images and labels, its
    config and the folder standing for the project."""
    import dataclasses

    import keras

    dataset, prepared = mnist_small
    project = tmp_path_factory.mktemp("project")
    cfg = config_in(project, "train.subset=1500", "train.epochs=2")
    cfg.dataset = dataclasses.replace(dataset)
    p = cfg.paths
    p.raw_dir, p.processed_dir, p.data_cache = str(prepared.raw_dir), str(prepared.processed_dir), str(data_cache())
    make_champion(cfg, project)
    (project / "dvc.yaml").write_text("stages: {}\n")  # the folder is the project: its params.yaml names the store
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "pipeline.tracking", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = (project / "serve.log").open("wb")
    server = subprocess.Popen(command, cwd=project, env=env, start_new_session=True, stdout=log, stderr=log)
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server)
        x, y = load_split(cfg.paths.processed_dir, "test")
        model = keras.models.load_model(cfg.paths.model)
        yield SimpleNamespace(port=port, model=model, x=x, y=y, cfg=cfg, project=project)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def answers(probs: np.ndarray) -> list[dict]:
    """What the contract says the server answers for these class probabilities."""
    out = []
    for row in probs:
        first, second = np.argsort(row)[::-1][:2]
        out.append({"label": str(first), "runner_up": str(second)})
    return out


def labels(body: bytes) -> list[dict]:
    predictions = json.loads(body)["predictions"]
    for p in predictions:
        assert set(p) == {"label", "probability", "runner_up", "runner_up_probability"}
        assert 1 >= p["probability"] >= p["runner_up_probability"] >= 0
    return [{"label": p["label"], "runner_up": p["runner_up"]} for p in predictions]


def test_a_batch_of_arrays_answers_as_the_keras_model(served):
    port, model, x = served.port, served.model, served.x
    status, body = post(port, {"inputs": x[:8].tolist()})
    assert status == 200
    probs = model.predict(x[:8], verbose=0)
    assert labels(body) == answers(probs)
    got = [p["probability"] for p in json.loads(body)["predictions"]]
    assert np.allclose(got, probs.max(axis=1), atol=1e-5)
    status, body = post(port, {"inputs": [{"npy": npy(image)} for image in x[:8]]})  # the same, as .npy files
    assert status == 200 and labels(body) == answers(probs)
    status, body = post(port, {"inputs": x[:8, ..., 0].tolist()})  # the same, without the one channel's axis
    assert status == 200 and labels(body) == answers(probs)


def test_a_batch_of_photographed_and_clean_images_answers_as_predict_prepares_them(served):
    port, model, x, y = served.port, served.model, served.x, served.y
    images = [photo_like(x[i], seed=i) for i in range(4)]
    images += [Image.fromarray((x[i, ..., 0] * 255).astype(np.uint8)) for i in range(4)]
    status, body = post(port, {"inputs": [{"image": png(image)} for image in images]})
    assert status == 200
    expected = answers(model.predict(np.stack([to_mnist(image) for image in images]), verbose=0))
    assert labels(body) == expected
    assert sum(e["label"] == str(t) for e, t in zip(expected[4:], y[:4], strict=True)) >= 3


def bomb() -> str:
    """A PNG whose header declares 121 million pixels (over Pillow's limit), in a small file."""
    buffer = io.BytesIO()
    Image.new("1", (11_000, 11_000)).save(buffer, format="PNG")
    assert buffer.tell() < 2_000_000
    return base64.b64encode(buffer.getvalue()).decode()


BAD = {
    "raw 0-255 floats": (
        lambda x: {"inputs": (x[:2] * 255).tolist()},
        r"outside \[0, 1\]: scale 0-255 pixels by 1/255",
    ),
    "wrong shape": (lambda x: {"inputs": x[:2, :, :27].tolist()}, r"shape \(2, 28, 27, 1\), expected \(n, 28, 28, 1\)"),
    "wrong key": (lambda x: {"data": x[:2].tolist()}, r"'inputs' key"),
    "wrong image key": (
        lambda x: {"inputs": [{"png": png(Image.new("L", (28, 28)))}]},
        r'inputs\[0\]: one key expected, "image"',
    ),
    "images and arrays mixed": (
        lambda x: {"inputs": [{"image": png(Image.new("L", (28, 28)))}, x[0].tolist()]},
        "mixed",
    ),
    "wrong dtype": (lambda x: {"inputs": np.where(x[:1] > 0.5, "ink", "").tolist()}, r"holds strings"),
    "not base64": (lambda x: {"inputs": [{"image": "not an image!"}]}, r"inputs\[0\]: image is not base64"),
    "base64 of no image": (
        lambda x: {"inputs": [{"image": base64.b64encode(b"%PDF-1.4 " * 100).decode()}]},
        r"inputs\[0\]: not an image Pillow can read \(UnidentifiedImageError\)",
    ),
    "a decompression bomb": (
        lambda x: {"inputs": [{"image": bomb()}]},
        r"inputs\[0\]: not an image Pillow can read \(DecompressionBomb",
    ),
    "a blank image": (
        lambda x: {"inputs": [{"image": png(Image.new("L", (40, 40), 200))}]},
        r"inputs\[0\]: no digit found",
    ),
    "a .npy of float64": (
        lambda x: {"inputs": [{"npy": npy(x[0].astype(np.float64))}]},
        r"inputs\[0\]: npy holds float64",
    ),
    "a .npy of 0-255 floats": (
        lambda x: {"inputs": [{"npy": npy(x[0] * 255)}]},
        r"inputs\[0\]: values outside \[0, 1\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_is_a_4xx_with_a_short_message_naming_the_problem(served, case):
    port, x = served.port, served.x
    make, message = BAD[case]
    payload = make(x)
    status, body = post(port, payload)
    assert 400 <= status < 500, (status, body[:500])
    assert len(body) <= SHORT, f"{len(body)} bytes: {body[:500]!r}"
    error = json.loads(body)
    assert re.search(message, error["message"]), error["message"]
    assert "stack_trace" not in error


def test_a_few_hundred_requests_four_at_a_time_get_no_5xx(served):
    port, x = served.port, served.x
    good = [{"inputs": x[i : i + 1].tolist()} for i in range(20)]
    good.append({"inputs": [{"image": png(photo_like(x[0], seed=0))}]})
    bad = [BAD["raw 0-255 floats"][0](x), BAD["wrong key"][0](x)]
    payloads = [json.dumps(p).encode() for p in (*good, *bad)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda i: post(port, payloads[i % len(payloads)])[0], range(300)))
    assert not [s for s in statuses if s >= 500]
    assert statuses.count(200) == sum(1 for i in range(300) if i % len(payloads) < len(good))


def documented(marker: str) -> str:
    """The shell lines of docs/serving.md's block marked ``<!-- contract: <marker> -->``."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(rf"<!-- contract: {re.escape(marker)} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, f"docs/serving.md has no block marked <!-- contract: {marker} -->"
    return block.group(1)


def run_documented(served, *markers: str) -> dict:
    """Run docs/serving.md's blocks as written, in the folder standing for the project (with docs/digit-7.png and
    TMPDIR there), but for the port and this interpreter's bin for ``.venv/bin/``; the JSON answer they print."""
    (served.project / "docs").mkdir(exist_ok=True)
    (served.project / "docs" / "digit-7.png").write_bytes((ROOT / "docs" / "digit-7.png").read_bytes())
    script = "\n".join(documented(m) for m in markers)
    script = script.replace("127.0.0.1:5001", f"127.0.0.1:{served.port}").replace(
        ".venv/bin/", f"{Path(sys.executable).parent}/"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["TMPDIR"] = str(served.project)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=served.project, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    at = out.stdout.rfind('{"predictions"')  # mlflow models predict prints the answer with no newline after it
    assert at >= 0, out.stdout[-2000:]
    return json.JSONDecoder().raw_decode(out.stdout[at:])[0]


def test_the_documented_curl_of_a_png_gives_the_right_digit(served):
    assert run_documented(served, "curl")["predictions"][0]["label"] == "7"


def test_the_documented_mlflow_models_predict_gives_the_right_digit(served):
    assert run_documented(served, "curl", "mlflow models predict")["predictions"][0]["label"] == "7"


def test_in_python_the_model_takes_a_list_of_float32_arrays_and_its_keras_network_stays_loadable(served):
    """``mlflow.pyfunc.load_model(uri).predict(list(x))``; another dtype is refused; ``load_keras_model`` gives the
    network whose file is the run's (its SHA-256 is the ``model_sha256`` tag)."""
    import mlflow

    from pipeline import tracking
    from pipeline.core.files import sha256_file
    from pipeline.tracking.served import RequestError

    model, x, cfg = served.model, served.x, served.cfg
    store = tracking.tracking_uri(cfg.tracking)
    uri = f"models:/{cfg.registry.name}@{cfg.registry.alias}"
    mlflow.set_tracking_uri(store)
    pyfunc = mlflow.pyfunc.load_model(uri)
    answers_ = pyfunc.predict(list(x[:3]))
    assert [a["label"] for a in answers_] == [e["label"] for e in answers(model.predict(x[:3], verbose=0))]
    with pytest.raises(RequestError, match=r"dtype float64, expected \(n, 28, 28, 1\) float32"):
        pyfunc.predict(list(x[:3].astype(np.float64)))
    with pytest.raises(RequestError, match=r"dtype uint8, .*scale 0-255 pixels by 1/255"):
        pyfunc.predict(list((x[:3] * 255).astype(np.uint8)))
    network = tracking.load_keras_model(uri, store)
    assert np.allclose(network.predict(x[:3], verbose=0), model.predict(x[:3], verbose=0), atol=1e-6)
    info = mlflow.models.get_model_info(uri)
    logged = mlflow.MlflowClient(store).get_logged_model(info.model_id)
    local = mlflow.artifacts.download_artifacts(f"{uri}/artifacts/{Path(cfg.paths.model).name}")
    assert sha256_file(local) == logged.tags["model_sha256"] == sha256_file(cfg.paths.model)
