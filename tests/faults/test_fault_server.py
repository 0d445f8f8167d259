"""The fault tier, a tracking server failing mid-run: answering HTTP 500, or not answering at all.

A real ``mlflow server`` (SQLite backend, artifacts proxied to a folder, 127.0.0.1) stands behind a small HTTP
proxy in this process. The proxy passes every request through until the train stage has logged its first curve
point (a ``runs/log-batch`` holding a ``batch_`` metric: the run is open and training), then fails the next
requests: it answers HTTP 500 itself, or reads the request and never answers. That failing front is the
simulated part (what a broken server, or a proxy or load balancer in front of one, shows its clients); the
server, the store, MLflow's client and its retries, and the stage are real.

Outcomes: a short outage is survived by MLflow's retries (no curve point lost); a lasting one is one line naming
the server and what it did, after the retries that :data:`pipeline.tracking.store.HTTP_BOUNDS` bounds, and the
run it could not mark FAILED is marked KILLED by the next run once the server answers.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest

from pipeline import tracking
from pipeline.core.errors import server_fault
from pipeline.server.manage import free_port, wait_healthy
from pipeline.tracking import store as tracking_store
from tests.conftest import stage_env
from tests.faults.test_fault_matrix import one_clear_line, write_params

# The fault tier: `make test-faults` (and CI), outside `make test`, the quick suite.
pytestmark = pytest.mark.faults

#: The tests that start a real ``mlflow server`` (tens of seconds here): ``make test-services``, as the team's.
SERVICES = pytest.mark.services
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class FailingFront(http.server.ThreadingHTTPServer):
    """A proxy to ``upstream`` that, once a curve point has gone through, fails the next ``count`` requests
    (None: all of them) with ``fault``: ``"500"`` (an HTTP 500 of its own) or ``"hang"`` (no answer, ever)."""

    daemon_threads = True

    def __init__(self, upstream: str, fault: str, count: int | None) -> None:
        super().__init__(("127.0.0.1", 0), Relay)
        self.upstream = urlsplit(upstream)
        self.fault, self.left = fault, count
        self.training = False  # a curve point went through: the run is open and training
        self.failed: list[str] = []  # the paths of the requests it failed
        self.first_failure = 0.0  # time.monotonic() of the first
        self.passing = threading.Event()  # set: fail nothing more, and let hung requests go
        self.lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def fails(self, path: str, body: bytes) -> str | None:
        with self.lock:
            if self.passing.is_set():
                return None
            if not self.training:
                self.training = "runs/log-batch" in path and b'"batch_' in body
                return None
            if self.left == 0:
                return None
            if self.left is not None:
                self.left -= 1
            self.first_failure = self.first_failure or time.monotonic()
            self.failed.append(path)
            return self.fault


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FailingFront

    def log_message(self, format: str, *args: object) -> None:
        pass

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def relay(self) -> None:
        body = self.body()
        fault = self.server.fails(self.path, body)
        if fault == "hang":
            self.server.passing.wait(120)
            self.close_connection = True
            return
        if fault == "500":
            self.answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "injected by the test"}', {})
            return
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.answer(resp.status, data, {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP})

    def answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on a SQLite store, artifacts proxied to a folder, as ``make server`` starts it (its
    PostgreSQL aside); its URI."""
    state = tmp_path_factory.mktemp("server")
    uri = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1],
           "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}", "--artifacts-destination",
           (state / "artifacts").as_uri(), "--workers", "1"]  # fmt: skip
    log = state / "mlflow.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=state, start_new_session=True)
    try:
        wait_healthy(uri, proc, log)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture
def front() -> Iterator[Callable[..., FailingFront]]:
    """``front(fault, count, upstream)``: a :class:`FailingFront` serving in a thread until the test ends."""
    fronts: list[FailingFront] = []

    def make(fault: str, count: int | None, upstream: str = "http://127.0.0.1:9") -> FailingFront:
        proxy = FailingFront(upstream, fault, count)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        fronts.append(proxy)
        return proxy

    yield make
    for proxy in fronts:
        proxy.passing.set()
        proxy.shutdown()
        proxy.server_close()


def train_through(proxy: FailingFront, make_cfg, tmp_path: Path, **env: str):
    """The train stage (a subprocess, as DVC runs it) logging through ``proxy``: its config, its process, and the
    seconds from the first failed request to the process's end."""
    cfg = make_cfg("train.subset=256", "train.log_every=1")
    cfg.tracking.uri = proxy.uri
    write_params(cfg, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=stage_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"), **env),
    )  # fmt: skip
    return cfg, proc, time.monotonic() - (proxy.first_failure or time.monotonic())


def newest_run(server: str, cfg):
    client = mlflow.MlflowClient(server)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]


def curve_points(cfg) -> int:
    return len(Path(cfg.paths.steps).read_text().splitlines()) - 1


@SERVICES
def test_a_server_answering_500_for_a_moment_mid_training_is_survived(server, front, make_cfg, tmp_path):
    """Two requests answered 500 while training: MLflow's retries (the pipeline's bounds, its backoff) carry the
    call over; the run completes with every curve point."""
    proxy = front("500", 2, server)
    cfg, proc, _ = train_through(proxy, make_cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proxy.failed) == 2, proxy.failed
    client, run = newest_run(server, cfg)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "batch_loss")) == curve_points(cfg) >= 5
    assert json.loads(Path(cfg.paths.run_info).read_text())["run_id"] == run.info.run_id


def assert_killed_by_the_next_run(server: str, proxy: FailingFront, cfg, tmp_path, monkeypatch) -> None:
    """What the run logged before the fault is on the server; the run stays RUNNING (the server could not be told)
    until the next run through the same server, once it answers again, marks it KILLED."""
    client, run = newest_run(server, cfg)
    assert run.info.status == "RUNNING" and "batch_loss" in run.data.metrics
    proxy.passing.set()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the stage kept its run's owner record
    with tracking.start_run(cfg):
        pass
    assert client.get_run(run.info.run_id).info.status == "KILLED"


@SERVICES
def test_a_server_answering_500_mid_training_is_one_line_naming_it(server, front, make_cfg, tmp_path, monkeypatch):
    proxy = front("500", None, server)
    cfg, proc, _ = train_through(proxy, make_cfg, tmp_path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="2")
    line = one_clear_line(proc, f"MLflow tracking server {proxy.uri} answered HTTP 500 to /api/2.0/mlflow/",
                          ", 3 times: check it and its log", "marked KILLED by the next run")  # fmt: skip
    assert "Traceback" not in proc.stderr and line
    assert not Path(cfg.paths.run_info).exists()
    assert_killed_by_the_next_run(server, proxy, cfg, tmp_path, monkeypatch)


@SERVICES
def test_a_server_that_hangs_mid_training_is_one_line_naming_it_in_bounded_time(
    server, front, make_cfg, tmp_path, monkeypatch
):
    """No answer at all: each call waits MLFLOW_HTTP_REQUEST_TIMEOUT for each of its tries (here 2 s and 2 tries,
    so the test is short; the pipeline's own bounds are :data:`HTTP_BOUNDS`), and ending the run is tried once."""
    proxy = front("hang", None, server)
    cfg, proc, seconds = train_through(
        proxy, make_cfg, tmp_path, MLFLOW_HTTP_REQUEST_TIMEOUT="2", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1"
    )
    one_clear_line(proc, f"MLflow tracking server {proxy.uri} did not answer /api/2.0/mlflow/", "within 2 s, 2 times")
    assert seconds < 30, seconds  # 2 x 2 s for the call, 2 s to end the run, and the process's exit
    assert len(proxy.failed) == 3, proxy.failed  # the call's two tries, then one to end the run
    assert_killed_by_the_next_run(server, proxy, cfg, tmp_path, monkeypatch)


def test_a_server_that_hangs_before_the_run_opens_is_one_line_before_any_training(front, make_cfg, tmp_path):
    """No answer from the start: the stage's first look at the server (``/health``, 10 s) says so, and nothing is
    trained or logged."""
    proxy = front("hang", None)  # no server behind it: nothing gets through
    proxy.training = True  # fail from the first request
    cfg, proc, seconds = train_through(proxy, make_cfg, tmp_path)
    one_clear_line(proc, f"MLflow tracking server {proxy.uri} is not reachable (timed out)", "make server")
    assert proxy.failed == ["/health"] and seconds < 30, (proxy.failed, seconds)
    assert not Path(cfg.paths.model).exists()


def test_a_servers_calls_are_bounded_unless_the_environment_says(monkeypatch):
    for name in tracking_store.HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    tracking_store.bound_http("sqlite:///mlflow.db")
    assert not set(tracking_store.HTTP_BOUNDS) & set(os.environ)  # a file store: no HTTP at all
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's: kept
    tracking_store.bound_http("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking_store.HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    )
    with tracking_store.one_attempt():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"


def test_the_bounds_report_a_hung_server_in_about_3_minutes_and_outlast_a_28_s_outage():
    """What docs/faults.md quotes of :data:`HTTP_BOUNDS`, from urllib3's own backoff with MLflow's factor: the
    sleeps between the tries (jitter aside: up to 1 s each), and the worst case of a call to a server that hangs."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR
    from urllib3.response import HTTPResponse
    from urllib3.util import Retry

    bounds = tracking_store.HTTP_BOUNDS
    assert bounds == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4"}
    retries = int(bounds["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    retry = Retry(total=retries, status=retries, backoff_factor=MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
                  status_forcelist=[500])  # fmt: skip
    sleeps = []
    for _ in range(retries):
        retry = retry.increment("GET", "/", response=HTTPResponse(status=500))
        sleeps.append(retry.get_backoff_time())
    assert sleeps == [0, 4, 8, 16] and sum(sleeps) == 28  # an outage shorter than that is survived
    hung = (retries + 1) * int(bounds["MLFLOW_HTTP_REQUEST_TIMEOUT"]) + sum(sleeps)
    assert hung == 178  # about 3 minutes, then one try (30 s) to end the run

    default = Retry(total=7, status=7, backoff_factor=2, status_forcelist=[500])  # MLflow's defaults, without
    waits = []
    for _ in range(7):
        default = default.increment("GET", "/", response=HTTPResponse(status=500))
        waits.append(default.get_backoff_time())
    assert 8 * 120 + sum(waits) == 1204  # about 20 minutes a call


def test_the_lines_for_a_failing_server_count_the_tries_the_bounds_allow(monkeypatch):
    """The lines docs/faults.md quotes, as MLflow's error reads after its retries within the pipeline's bounds
    (the exception's text is MLflow's, as the stage tests above get it from a real call)."""
    from mlflow.exceptions import MlflowException

    for name in tracking_store.HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    tracking_store.bound_http("http://127.0.0.1:5000")
    url = "http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch"
    pool = (
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch"
    )
    status = MlflowException(f"API request to {url} failed with exception {pool} (Caused by ResponseError('too many "
                             "500 error responses'))")  # fmt: skip
    hung = MlflowException(f"API request to {url} failed with exception {pool} (Caused by ReadTimeoutError(\"HTTP"
                           "ConnectionPool(host='127.0.0.1', port=5000): Read timed out. (read timeout=30)\"))")  # fmt: skip
    assert server_fault(status) == (
        "MLflow tracking server http://127.0.0.1:5000 answered HTTP 500 to /api/2.0/mlflow/runs/log-batch, 5 times: "
        "check it and its log (python -m pipeline.server status), then rerun; a run it could not mark FAILED is "
        "marked KILLED by the next run"
    )
    assert "did not answer /api/2.0/mlflow/runs/log-batch within 30 s, 5 times: check it" in server_fault(hung)
