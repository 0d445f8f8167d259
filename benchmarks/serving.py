"""Serving latency and throughput: the served model (``make serve``'s command) against the bare Keras call.

Consumes: a ``.keras`` file (``--model``, default ``models/model.keras``, what ``make run`` trains; the cost is the
architecture's, not the weights') and MNIST's test images (``--mnist``: a folder holding
``t10k-images-idx3-ubyte.gz``, default ``$DATA_MIRROR``). Produces: a table on stdout and
``benchmarks/results/serving-<time>.json``, which docs/serving.md quotes (``tests/unit/test_serving_docs.py``).

What it does, all on 127.0.0.1 with bounded load (a fixed number of requests, a few at a time):

1. logs the file as the pipeline's pyfunc (``tracking.log_model``, as the train stage does) in a throw-away
   store, and serves it with ``make serve``'s command, ``python -m pipeline.tracking serve --model
   models:/<id> --workers N``, once per ``--workers`` value, then with stock ``mlflow models serve -m
   models:/<id> --env-manager local`` once per ``--stock-workers`` value (the "before" figures);
2. then ``--rounds`` rounds, each the bare calls then the served ones (alternating, so that the machine's drift
   hits both alike):

   - single-image latency: ``--requests`` requests one at a time per kind of payload, the same test images as
     JSON numbers (``{"inputs": [x.tolist()]}``), as ``.npy`` files (``{"inputs": [{"npy": ...}]}``) and as PNG
     files (``{"inputs": [{"image": ...}]}``);
   - throughput: ``--batches`` requests of 100 images, ``--concurrency`` at a time, as JSON numbers (shaped
     ``(100, 28, 28, 1)``, and ``(100, 28, 28)`` without the channel's axis: ``json_hw``) and as ``.npy`` files:
     images/s;
   - the bare call in this process on the same images: the Keras model called eagerly (``model(x)``) and its
     traced forward pass (:func:`pipeline.model.inference.traced`, what the served model runs); for the PNG, the
     preparation (:func:`pipeline.data.imageprep.prepare_image`) then the traced call;

3. where a served request's time goes, in this process: ``json.loads`` and orjson's ``loads`` of the body, the
   pyfunc's ``predict`` (checks, conversion, forward pass, answer), its forward pass alone, and the whole
   handling of the same body, less HTTP: stock (``mlflow.pyfunc.scoring_server.invocations``) and ``make
   serve``'s (``pipeline.tracking.scoring.invoke``).

Latency: the median of the rounds' p50, the p99 of all requests; throughput: the median of the rounds'. The
differences and ratios (medians over rounds of each round's) compare with the traced bare call, the faster one.
Run: ``python benchmarks/serving.py --model models/model.keras [--workers 1 2] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gzip
import http.client
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 100


def test_images(folder: Path, n: int) -> np.ndarray:
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw[16 : 16 + 784 * n], np.uint8).reshape(n, 28, 28, 1).astype(np.float32) / 255


def png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image[..., 0] * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {isa}{' + AVX512_BF16' if 'avx512_bf16' in flags else ''}"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.median(ms)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def log_model(model: Path, store: Path) -> str:
    """The .keras file logged as the train stage logs it; its model id."""
    import mlflow

    from pipeline import tracking
    from pipeline.config import compose, validate
    from pipeline.core.files import sha256_file
    from pipeline.model.inference import load_predictor

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    # The artifacts beside the throw-away store (SQLite's default is ./mlruns, wherever this runs).
    mlflow.create_experiment("serving-benchmark", artifact_location=(store / "artifacts").as_uri())
    mlflow.set_experiment("serving-benchmark")
    dataset = validate(compose()).dataset
    with mlflow.start_run():
        example = np.zeros((1, 28, 28, 1), np.float32)
        return tracking.log_model(
            model, example, {}, {"model_sha256": sha256_file(model)}, dataset=dataset, loader=load_predictor
        )


class Server:
    """The model ``models:/<model_id>`` served on a free port of 127.0.0.1: by ``make serve``'s command
    (``python -m pipeline.tracking serve``, the project's app), or, with ``stock``, by MLflow's own
    ``mlflow models serve --env-manager local`` (what ``make serve`` ran before: the "before" figures)."""

    def __init__(self, model_id: str, store: Path, workers: int, stock: bool = False) -> None:
        from pipeline.server.manage import free_port

        self.port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        where = ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        if stock:
            command = ["mlflow", "models", "serve", "-m", f"models:/{model_id}", "--env-manager", "local", *where]
        else:
            command = [sys.executable, "-m", "pipeline.tracking", "serve", "--model", f"models:/{model_id}", *where]
        self.log = (store / f"serve-{'stock' if stock else 'project'}-{workers}.log").open("wb")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=self.log,
                                     stderr=self.log)  # fmt: skip
        self.local = threading.local()
        deadline = time.monotonic() + 300
        while True:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}"
            try:
                if self.request("GET", "/ping", b"")[0] == 200:
                    break
            except OSError:
                self.local.__dict__.clear()
            assert time.monotonic() < deadline, "the server did not start in 300 s"
            time.sleep(0.5)

    def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """One request on this thread's kept-alive connection."""
        for attempt in (1, 2):  # uvicorn closes a connection idle for 5 s: the second attempt opens a new one
            if not hasattr(self.local, "conn"):
                self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.local.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                response = self.local.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.local.conn.close()
                del self.local.conn
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def invoke(self, body: bytes) -> float:
        start = time.perf_counter()
        status, answer = self.request("POST", "/invocations", body)
        elapsed = time.perf_counter() - start
        assert status == 200, (status, answer[:300])
        return elapsed

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def served_round(
    server: Server, singles: dict[str, list[bytes]], batches: dict[str, list[bytes]], concurrency: int
) -> dict:
    """One round against the server: each single-image request one at a time (seconds each), then the 100-image
    requests ``concurrency`` at a time (images/s), per payload kind."""
    out: dict = {}
    for kind, bodies in singles.items():
        out[f"single_{kind}"] = [server.invoke(body) for body in bodies]
    for kind, bodies in batches.items():
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(server.invoke, bodies))
        out[f"batched_{kind}"] = len(bodies) * BATCH / (time.perf_counter() - start)
    return out


def npy(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, image.astype(np.float32))
    return base64.b64encode(buffer.getvalue()).decode()


class Bare:
    """The same network in this process: called eagerly (``model(x)``), traced (what the served model runs), and
    traced after the PNG's preparation."""

    def __init__(self, model_path: Path) -> None:
        from pipeline.model.inference import traced
        from pipeline.model.score import load_model

        model = load_model(model_path)
        self.calls = {"eager": lambda batch: np.asarray(model(batch, training=False)), "traced": traced(model)}

    def round(self, x: np.ndarray, pngs: list[str], chunks: list[np.ndarray]) -> dict:
        from pipeline.data.imageprep import prepare_image

        out: dict = {}
        for name, call in self.calls.items():
            call(x[:1]), call(chunks[0])  # warm: the first calls allocate
            single = []
            for i in range(len(pngs)):
                start = time.perf_counter()
                call(x[i : i + 1])
                single.append(time.perf_counter() - start)
            start = time.perf_counter()
            for chunk in chunks:
                call(chunk)
            out[f"{name}_single"], out[f"{name}_batched"] = single, len(chunks) * BATCH / (time.perf_counter() - start)
        prepared = []
        for encoded in pngs:
            start = time.perf_counter()
            self.calls["traced"](prepare_image(base64.b64decode(encoded))[None])
            prepared.append(time.perf_counter() - start)
        out["png_prepare_traced_single"] = prepared
        return out


def summary(rounds: list[dict]) -> dict:
    """Per figure: single-image latency as the median of the rounds' p50 and the p99 of all requests; throughput as
    the median of the rounds'."""
    out: dict = {}
    for key in rounds[0]:
        if key.endswith("_single") or key.startswith("single_"):
            out[key] = {
                "p50_ms": round(float(np.median([np.median(r[key]) for r in rounds])) * 1e3, 2),
                "p99_ms": round(float(np.percentile(np.concatenate([r[key] for r in rounds]), 99)) * 1e3, 2),
            }
        else:
            out[f"{key}_images_per_s"] = round(float(np.median([r[key] for r in rounds])), 1)
    return out


def breakdown(model_id: str, store: Path, bodies: dict[str, list[bytes]]) -> dict:
    """Where a request's time goes, in this process: JSON parsing, and the pyfunc's predict (checks, conversion,
    the forward pass, the answer) against its forward pass alone."""
    import mlflow
    import orjson
    from mlflow.pyfunc import scoring_server

    from pipeline.tracking import scoring

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    model = pyfunc.unwrap_python_model()
    schema = pyfunc.metadata.get_input_schema()
    out = {}
    for name, requests in bodies.items():
        parse, fast_parse, predict, forward, server, project = [], [], [], [], [], []
        for body in requests:
            start = time.perf_counter()  # the server's whole handling of the body, less HTTP: parsing, predict, answer
            answer = scoring_server.invocations(body, "application/json", pyfunc, schema)
            server.append(time.perf_counter() - start)
            assert answer.status == 200, answer.response[:300]
            start = time.perf_counter()  # make serve's route less HTTP: decoded once, collector paused
            answer = scoring.invoke(body, "application/json", pyfunc, schema)
            project.append(time.perf_counter() - start)
            assert answer.status == 200, answer.response[:300]
            start = time.perf_counter()
            instances = json.loads(body)["inputs"]
            parse.append(time.perf_counter() - start)
            start = time.perf_counter()
            orjson.loads(body)
            fast_parse.append(time.perf_counter() - start)
            start = time.perf_counter()
            pyfunc.predict(instances)
            predict.append(time.perf_counter() - start)
            x = model.batch(instances)
            start = time.perf_counter()
            model.predictor.forward(x)
            forward.append(time.perf_counter() - start)
        out[name] = {
            "request_bytes": len(requests[0]),
            "json_loads_ms": round(float(np.median(parse)) * 1e3, 2),
            "orjson_loads_ms": round(float(np.median(fast_parse)) * 1e3, 2),
            "pyfunc_predict_ms": round(float(np.median(predict)) * 1e3, 2),
            "forward_ms": round(float(np.median(forward)) * 1e3, 2),
            "server_invocations_ms": round(float(np.median(server)) * 1e3, 2),
            "project_invocations_ms": round(float(np.median(project)) * 1e3, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.keras")
    parser.add_argument("--mnist", type=Path, default=Path(os.environ.get("DATA_MIRROR", ROOT / "data" / "raw")))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="make serve's command, per count")
    parser.add_argument("--stock-workers", type=int, nargs="*", default=[1],
                        help="mlflow models serve as it is (the before figures), per count")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of bare and served calls")
    parser.add_argument("--requests", type=int, default=100, help="single-image requests a round, per kind")
    parser.add_argument("--batches", type=int, default=8, help="100-image requests a round, per kind")
    parser.add_argument("--concurrency", type=int, default=2, help="100-image requests in flight at once")
    args = parser.parse_args()
    from pipeline.model.runtime import import_tensorflow

    import_tensorflow()
    x = test_images(args.mnist, max(args.requests, BATCH * 10))
    pngs = [png(x[i]) for i in range(args.requests)]
    chunks = [x[(b * BATCH) % len(x) :][:BATCH] for b in range(args.batches)]
    singles = {  # one image a request: JSON numbers, a PNG file, a .npy file
        "json": [json.dumps({"inputs": x[i : i + 1].tolist()}).encode() for i in range(args.requests)],
        "png": [json.dumps({"inputs": [{"image": s}]}).encode() for s in pngs],
        "npy": [json.dumps({"inputs": [{"npy": npy(x[i])}]}).encode() for i in range(args.requests)],
    }
    batches = {  # 100 images a request; "json_hw": the same numbers without the one channel's axis
        "json": [json.dumps({"inputs": c.tolist()}).encode() for c in chunks],
        "json_hw": [json.dumps({"inputs": c[..., 0].tolist()}).encode() for c in chunks],
        "npy": [json.dumps({"inputs": [{"npy": npy(image)} for image in c]}).encode() for c in chunks],
    }
    record: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu(),
        "load_average_before": list(os.getloadavg()),
        "model_file": str(args.model),
        "rounds": args.rounds,
        "requests": args.requests,
        "batches": args.batches,
        "batch_size": BATCH,
        "concurrency": args.concurrency,
        "served": {},
        "stock": {},
    }
    with tempfile.TemporaryDirectory(prefix="serving-") as tmp:
        store = Path(tmp)
        model_id = log_model(args.model, store)
        bare = Bare(args.model)
        for stock, workers in [(False, n) for n in args.workers] + [(True, n) for n in args.stock_workers]:
            server = Server(model_id, store, workers, stock)
            try:
                for body in singles["json"][:20] + batches["json"][:2] + batches["npy"][:2]:  # warm: allocations
                    server.invoke(body)
                pairs = []
                for _ in range(args.rounds):  # bare and served alternate: the machine's drift hits both alike
                    pairs.append(
                        (bare.round(x, pngs, chunks), served_round(server, singles, batches, args.concurrency))
                    )
            finally:
                server.stop()
            figures: dict[str, Any] = {"served": summary([s for _, s in pairs]), "bare": summary([b for b, _ in pairs])}
            for kind in singles:  # the medians over rounds of each round's difference and ratio
                figures[f"single_{kind}_p50_minus_bare_ms"] = round(
                    float(np.median([np.median(s[f"single_{kind}"]) - np.median(b["traced_single"]) for b, s in pairs]))
                    * 1e3, 2,
                )  # fmt: skip
            for kind in batches:
                figures[f"batched_{kind}_ratio_to_bare"] = round(
                    float(np.median([s[f"batched_{kind}"] / b["traced_batched"] for b, s in pairs])), 3
                )
            record["stock" if stock else "served"][f"workers_{workers}"] = figures
        record["breakdown"] = breakdown(
            model_id, store, {"single_json": singles["json"][:50], **{f"batch_{k}": v[:8] for k, v in batches.items()}}
        )
    record["load_average_after"] = list(os.getloadavg())
    out = ROOT / "benchmarks" / "results" / f"serving-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
