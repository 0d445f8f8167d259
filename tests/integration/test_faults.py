"""Bad input and faults: every error names the file or key, nothing half-written is left, runs end honestly."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import tracking
from pipeline.config import FileSpec, to_dict
from pipeline.core.errors import DataError
from pipeline.core.files import sha256_file
from pipeline.data.download import fetch
from pipeline.data.formats import load_split, save_npz
from pipeline.model.fit import fit
from pipeline.model.score import load_model
from pipeline.stages.evaluate import evaluate
from tests.conftest import ROOT, stage_env

# The fault tier: `make test-faults` (and CI), outside `make test`, the quick suite.
pytestmark = pytest.mark.faults

PAYLOAD = b"the real content " * 100
SPEC = FileSpec(file="f.gz", sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))


# ------------------------------------------------------------------ download over HTTP, on 127.0.0.1


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = gzip.compress(PAYLOAD)
        route = self.path.split("/")[1]
        if route == "missing":
            self.send_error(404)
            return
        if route == "broken":
            self.send_error(503)
            return
        if route == "slow":
            time.sleep(1.5)
        if route == "wrong":
            body = gzip.compress(b"X" * len(PAYLOAD))  # right size, wrong bytes
        if route == "private" and self.headers.get("Authorization") != "Basic dXNlcjpodW50ZXIy":  # user:hunter2
            self.send_error(401)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the timeout case)
            self.wfile.write(body[: len(body) // 2] if route == "truncated" else body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_failing_mirror_is_reported_then_the_good_one_used(server, tmp_path):
    dest = tmp_path / "f"
    mirrors = [
        f"{server}/missing/",
        f"{server}/broken/",
        f"http://127.0.0.1:{closed_port()}/",
        f"{server}/slow/",
        f"{server}/truncated/",
        f"http://user:hunter2@127.0.0.1:{server.rsplit(':', 1)[1]}/wrong/",
    ]
    with pytest.raises(DataError) as err:
        fetch(SPEC, dest, mirrors, timeout=0.5, retries=2, backoff=0.01)
    lines = str(err.value).splitlines()
    assert lines[0] == "f.gz: every mirror failed:"
    assert "missing/: HTTP 404" in lines[1]
    assert "broken/: HTTP 503" in lines[2] and "(after 2 attempts)" in lines[2]  # 5xx is retried
    assert "Connection refused" in lines[3]
    assert "slow/" in lines[4] and "timed out" in lines[4]
    assert "truncated/: truncated or corrupt gzip" in lines[5]
    assert "wrong/: SHA-256 mismatch" in lines[6]
    assert "hunter2" not in str(err.value) and "***@127.0.0.1" in lines[6]  # credentials never shown
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert fetch(SPEC, dest, [f"{server}/missing/", f"{server}/ok/"], timeout=2, retries=1) == f"{server}/ok/"
    assert dest.read_bytes() == PAYLOAD
    private = f"http://user:hunter2@127.0.0.1:{server.rsplit(':', 1)[1]}/private/"
    assert fetch(SPEC, tmp_path / "g", [private], timeout=2, retries=1) == private.replace("user:hunter2", "***")


# ------------------------------------------------------------------ stage CLIs: clear errors, exit 2


def write_params(folder: Path, cfg) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_stage(stage: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{stage}"], cwd=cwd, env=stage_env(Path("/nonexistent"), **env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


BAD_PARAMS = [
    (lambda p: p["train"].update(batch_size=0), "params.yaml: bad value for 'train.batch_size': 0"),
    (
        lambda p: p["train"].update(epocs=2),
        "params.yaml: unknown key 'train.epocs' (not a field of 'train'); did you mean 'train.epochs'?",
    ),
    (lambda p: p["optimizer"].update(name="adagrad"), "optimizer.name='adagrad' is not a known optimizer"),
]


def test_stage_process_refuses_bad_params_with_exit_2_and_no_traceback(make_config, tmp_path):
    edit, message = BAD_PARAMS[0]
    params = to_dict(make_config())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage("train", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(make_config().paths.model).exists()
    for stage in ("train", "evaluate"):  # refused before the heavy imports (TensorFlow 4-5 s, MLflow 1.5 s)
        traced = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", f"pipeline.stages.{stage}"], cwd=tmp_path,
            env=stage_env(Path("/nonexistent")), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if "|" in line}
        assert traced.returncode == 2 and "pipeline.config" in imported, traced.stderr[-2000:]
        assert not imported & {"tensorflow", "keras", "mlflow"}, stage


@pytest.mark.parametrize(("edit", "message"), BAD_PARAMS)
def test_stages_refuse_bad_params_naming_the_key(make_config, tmp_path, monkeypatch, capsys, edit, message):
    import pipeline.stages.evaluate
    import pipeline.stages.train
    from pipeline.core.errors import run_cli

    params = to_dict(make_config())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    for stage in (pipeline.stages.train, pipeline.stages.evaluate):
        with pytest.raises(SystemExit) as exit_:
            run_cli(stage.main)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not Path(make_config().paths.model).exists()


def test_missing_and_corrupt_inputs_name_the_file(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.paths.processed_dir = str(tmp_path / "nodata")
    with pytest.raises(DataError, match=r"nodata/train.npz: processed data not found"):
        fit(cfg)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"bad/train.npz: corrupt or unreadable .npz"):
        load_split(bad, "train")
    # An object array would need pickle to load: refused, never unpickled.
    np.savez(bad / "test.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([1]))
    with pytest.raises(DataError, match=r"bad/test.npz: corrupt or unreadable .npz \(Object arrays cannot be"):
        load_split(bad, "test")
    save_npz(bad / "test.npz", x=np.zeros((2, 28, 28), np.float64), y=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=r"images must be uint8 pixels \(N, H, W, 1 or 3 channels\), got float64"):
        load_split(bad, "test")
    with pytest.raises(DataError, match=r"nomodel.keras: model file not found"):
        load_model(tmp_path / "nomodel.keras")
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk.keras: not a loadable Keras model"):
        load_model(tmp_path / "junk.keras")
    cfg = make_cfg()
    Path(cfg.paths.model).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.paths.model).write_bytes(b"junk")
    with pytest.raises(DataError, match=r"not a loadable Keras model"):
        evaluate(cfg)
    assert not Path(cfg.paths.metrics).exists()  # the failed stage left no report behind


def test_model_with_code_is_refused_by_safe_mode(tmp_path):
    import keras

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(DataError, match=r"lambda.keras: not a loadable Keras model .*safe_mode"):
        load_model(tmp_path / "lambda.keras")


# ------------------------------------------------------------------ MLflow run status on failure


def run_status(cfg, run_id: str) -> str:
    return mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking)).get_run(run_id).info.status


def test_exception_leaves_run_failed_and_no_outputs(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.paths.processed_dir = str(tmp_path / "nodata")
    with pytest.raises(DataError), tracking.start_run(cfg) as run:
        fit(cfg)
    assert run_status(cfg, run.info.run_id) == "FAILED"
    assert not Path(cfg.paths.model).exists() and not Path(cfg.paths.history).exists()


def test_evaluate_stage_failing_in_its_scoring_process_ends_the_run_failed(make_cfg, tmp_path):
    """The evaluate stage scores in a forked child (pipeline.core.forking.forked) while it opens the run: a model
    the child cannot load is still one clear line naming the file, exit 2, and the run it opened FAILED."""
    cfg = make_cfg()
    with tracking.start_run(cfg) as run:  # the training run: finished, no evaluation yet
        pass
    Path(cfg.paths.model).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.paths.model).write_bytes(b"junk")  # recorded as the run's: the identity check passes, loading fails
    tracking.record_of(run, model_sha256=sha256_file(cfg.paths.model)).write(cfg.paths.run_info)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    proc = run_stage("evaluate", tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {cfg.paths.model}: not a loadable Keras model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_status(cfg, run.info.run_id) == "FAILED"
    assert not Path(cfg.paths.metrics).exists() and not Path(cfg.paths.eval_info).exists()


def test_keyboard_interrupt_leaves_run_killed(make_config):
    cfg = make_config()
    with pytest.raises(KeyboardInterrupt), tracking.start_run(cfg) as run:
        tracking.log_metrics({"loss": 1.0}, step=0)
        raise KeyboardInterrupt
    assert run_status(cfg, run.info.run_id) == "KILLED"


def test_sigkilled_run_is_marked_killed_by_another_process_and_a_live_one_never_is(make_config):
    cfg = make_config()
    reaper = [
        sys.executable,
        "-c",
        "import sys; from pipeline import tracking; print(tracking.reap_orphans(sys.argv[1]))",
    ]
    with tracking.start_run(cfg) as live:
        uri = mlflow.get_tracking_uri()
        client = mlflow.MlflowClient(uri)
        orphan = client.create_run(live.info.experiment_id).info.run_id
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        record = tracking.running_dir(uri) / f"{orphan}.json"
        record.write_text(json.dumps({"pid": dead.pid, "started": None}))  # its owner died unannounced
        # Another process reaps while this run is live: only the orphan is marked.
        out = subprocess.run([*reaper, uri], capture_output=True, text=True, check=True, cwd=ROOT).stdout
        assert out.strip() == repr([orphan])
        assert client.get_run(live.info.run_id).info.status == "RUNNING"
    assert client.get_run(orphan).info.status == "KILLED" and not record.exists()
    assert client.get_run(live.info.run_id).info.status == "FINISHED"
    assert list(tracking.running_dir(uri).iterdir()) == []  # the live run's record went once it ended


KILLED_MID_EPOCH = """
import os, signal
import pipeline.stages.train as stage
from pipeline.core.errors import run_cli

class SigtermAt:
    \"\"\"A fit observer delivering a real SIGTERM to this process at a known point: epoch 1, step 35 (20 steps an
    epoch), after its backup at step 30 (five steps per execution and a curve point every 5 steps: observers see
    steps 5, 10, ...).\"\"\"
    def on_step(self, step, metrics):
        if step == 35:
            os.kill(os.getpid(), signal.SIGTERM)
    def on_epoch(self, epoch, metrics, seconds):
        pass

fit = stage.fit
stage.fit = lambda cfg, observers=(): fit(cfg, observers=[*observers, SigtermAt()])
run_cli(stage.main, fast_exit=True)
"""


def test_sigterm_kills_run_keeps_epochs_and_rerun_resumes(make_cfg, tmp_path):
    """SIGTERM mid-training: run KILLED with the epochs so far, no model; the rerun resumes from the backup."""
    cfg = make_cfg(
        "train.subset=640", "train.epochs=3", "train.backup_every=10", "train.steps_per_execution=5",
        "train.log_every=5",  # a curve point, so an observer call, at each of Keras' batch callbacks
    )  # fmt: skip
    write_params(tmp_path, cfg)
    backup_root = Path(cfg.paths.backup_dir)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_EPOCH], cwd=tmp_path, env=stage_env(Path("/nonexistent")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out
    assert not Path(cfg.paths.model).exists() and not Path(cfg.paths.run_info).exists()
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (killed,) = client.search_runs([exp.experiment_id])
    assert killed.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "loss")][:1] == [0]  # kept

    # The rerun, as DVC runs it (main() ends its process: os._exit): what matters is the backup it finds.
    rerun = run_stage("train", tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming an interrupted training" in rerun.stderr
    epochs = [int(line.split(",")[0]) for line in Path(cfg.paths.history).read_text().splitlines()[1:]]
    assert epochs[0] >= 1 and epochs[-1] == 2  # continued at the interrupted epoch, not from epoch 0
    assert Path(cfg.paths.model).is_file()
    assert not [p for p in backup_root.iterdir() if p.is_dir()]  # the backup is removed once training completes


def test_two_processes_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    """Two queued DVC experiments (or sweeps) meeting a store that does not exist yet: MLflow's schema
    creation is not safe against itself ('duplicate column name'), so tracking.setup serialises it."""
    code = (
        "import dataclasses, sys; from pipeline import tracking; from pipeline.config import compose, validate; "
        "print(tracking.setup(dataclasses.replace(validate(compose()).tracking, uri=sys.argv[1])))"
    )
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert results[0][0] == results[1][0]  # one experiment, created once


# ------------------------------------------------------------------ secrets and servers


def test_no_secret_reaches_params_tags_or_artifacts(make_config, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "envsecret")
    monkeypatch.setenv("DATA_MIRROR", "https://bob:mirrorsecret@mirror.example/mnist/")
    cfg = make_config()
    cfg.dataset.mirrors = ["https://alice:cfgsecret@mirror.example/mnist/?token=tok123&x=1"]
    with tracking.start_run(cfg) as run:
        tracking.set_tags({"source": os.environ["DATA_MIRROR"]})
    r = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking)).get_run(run.info.run_id)
    everything = json.dumps([r.data.params, r.data.tags])
    for secret in ("envsecret", "mirrorsecret", "cfgsecret", "tok123"):
        assert secret not in everything
    assert "https://***@mirror.example/mnist/?token=***&x=1" in r.data.params["dataset.mirrors"]


def test_servers_bind_to_localhost():
    out = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--host 127.0.0.1" in out
