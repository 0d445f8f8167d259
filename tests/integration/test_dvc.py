"""Where the tools meet, in one fresh copy of the repository: `dvc repro`, then the Hydra app sweeping over
datasets with the joblib launcher while a queued DVC experiment runs and other processes reap orphaned
runs, then a re-evaluation.

One scenario (a module fixture) runs the real commands once; each test checks one promise about what they
left: DVC's outputs are DVC's alone, each job trains on its own data, runs end FINISHED despite the
reaping, queued experiments log to the project's store, a finished run stays history, and no credential
(from params.yaml, the command line, a sweep or the environment) reaches any byte the project wrote or
printed.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.config import plain
from pipeline.data.formats import load_split
from pipeline.tracking.served import MAX_BATCH
from tests.conftest import copy_repo, stage_env
from tests.integration.test_run import assert_nowhere, written_files

#: Every test here reads the scenario of DVC's own processes (or is slow): `make test-e2e`, not the quick suite.
pytestmark = pytest.mark.e2e

SECRETS = {"params": "params-secret-1", "sweep": "sweep-secret-2", "env": "env-secret-3", "password": "env-secret-4"}


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the small datasets' mirror folders (/mnist_small/..., /fashion_small/...) to user bob with any of
    the test passwords (basic auth)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        allowed = {"Basic " + base64.b64encode(f"bob:{pw}".encode()).decode() for pw in SECRETS.values()}
        if self.headers.get("Authorization") not in allowed:
            self.send_error(401)
            return
        super().do_GET()


def dvc(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", proc.stdout)


def store(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def add_datasets(repo: Path, *datasets) -> None:
    """conf/dataset/<name>.yaml for each dataset, committed: DVC's queued experiments see only git's files."""
    for dataset in datasets:
        (repo / "conf" / "dataset" / f"{dataset.name}.yaml").write_text(yaml.safe_dump(plain(dataset)))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "datasets"], cwd=repo, check=True
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror, mnist_small, fashion_small):
    """Run the scenario once, on the small real subsets; return what the tests inspect."""
    small, _ = mnist_small
    repo = copy_repo(
        tmp_path_factory.mktemp("project") / "repo", exports=True, store=True
    )  # each champion's files: checked
    add_datasets(repo, *[d for d in (small, fashion_small) if d is not None])
    served = Path(small.mirrors[0]).parent  # mirrors/mnist_small/, mirrors/fashion_small/
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(MirrorHandler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://bob:{{}}@127.0.0.1:{httpd.server_port}/{{}}/"
    printed: list[str] = []
    try:
        # 1. dvc repro, with a credential in params.yaml and no $DATA_MIRROR: the stages must use it.
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["dataset"] = {**plain(small), "mirrors": [base.format(SECRETS["params"], small.name)]}
        params["train"].update(subset=300, verbose="silent")
        params["registry"]["name"] = f"{small.name}-cnn"  # as composing conf/ with dataset=mnist_small gives
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = stage_env(mirror, DATA_MIRROR="", MLFLOW_TRACKING_PASSWORD=SECRETS["password"])
        first = dvc(repo, env, "repro")
        printed += [first.stdout, first.stderr]
        registry_first = json.loads((repo / "reports" / "registry.json").read_text())
        outputs_before = {
            p: (repo / p).read_bytes()
            for p in ("data/processed/train.npz", "models/model.keras", "reports/metrics.json")
        }
        trained_run = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
        client = store(repo)
        train_before = client.get_run(trained_run)
        history_before = client.get_metric_history(trained_run, "test_accuracy")

        # 2. A queued DVC experiment, run by a worker in a temporary copy (under .dvc/tmp/exps), in the
        #    background while step 3 runs. (`dvc exp run -S` recomposes params.yaml from conf/: the subset
        #    is given again.)
        small_run = ("-S", f"dataset={small.name}", "-S", "train.subset=300", "-S", "train.verbose=silent")
        queued = dvc(repo, env, "exp", "run", "--queue", "-S", "optimizer=rmsprop", *small_run).stdout
        experiments = re.findall(r"Queued experiment '(\S+)'", queued)
        # The worker runs in the background, holding any pipe it inherits: give it none.
        subprocess.run(["dvc", "queue", "start"], cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip
        try:
            # 3. A joblib sweep over datasets, credentials on the command line and in the environment,
            #    while two other processes reap orphaned runs of the same store.
            datasets = f"dataset={small.name},fashion_small" if fashion_small else f"dataset={small.name} seed=1,2"
            sweep_mirrors = f"dataset.mirrors=[{base.format(SECRETS['sweep'], small.name)},{base.format(SECRETS['sweep'], 'fashion_small')}]"
            sweep_env = {**env, "DATA_MIRROR": base.format(SECRETS["env"], small.name)}
            stop = repo.parent / "stop-reaping"
            reaper = [sys.executable, "-c", REAPER, f"sqlite:///{repo / 'mlflow.db'}", str(stop)]
            reapers = [subprocess.Popen(reaper, cwd=repo, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
            try:
                sweep = subprocess.run(
                    [sys.executable, "-m", "pipeline.run", "-m", *datasets.split(), sweep_mirrors, "train.subset=300",
                     "train.verbose=silent", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                    cwd=repo, env=sweep_env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
            finally:
                stop.touch()
                reaps = [int(r.communicate(timeout=60)[0].strip() or 0) for r in reapers]
            printed += [sweep.stdout, sweep.stderr]
            assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]

            deadline = time.monotonic() + 300
            while re.search(r"\b(Queued|Running)\b", queue := dvc(repo, env, "queue", "status").stdout):
                assert time.monotonic() < deadline, f"queue still busy:\n{queue}"
                time.sleep(2)  # polling the queue, not racing it
        finally:
            subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True, timeout=120)

        # 4. DVC's view after the app and the experiment: nothing changed, nothing to run.
        status = dvc(repo, env, "status")
        noop = dvc(repo, env, "repro")
        shown = json.loads(dvc(repo, env, "exp", "show", "--json").stdout)

        # 5. The evaluation code changes: only evaluate reruns, on the model train made in step 1.
        with open(repo / "pipeline" / "stages" / "evaluate.py", "a") as f:
            f.write("\n# a change to the evaluation code\n")
        reevaluated = dvc(repo, env, "repro")
        printed += [reevaluated.stdout, reevaluated.stderr]
        registry_again = json.loads((repo / "reports" / "registry.json").read_text())
        plots = dvc(repo, env, "plots", "show", "-o", str(repo.parent / "plots"))

        # 6. Another optimizer in params.yaml: DVC knows the data stages are unaffected.
        params["optimizer"] = {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        changed = dvc(repo, env, "status", "--json")
        yield {
            "repo": repo, "first": first, "sweep": sweep, "status": status, "noop": noop, "reevaluated": reevaluated,
            "changed": json.loads(changed.stdout), "reaps": reaps, "outputs_before": outputs_before,
            "train_before": train_before, "history_before": history_before, "printed": "".join(printed),
            "datasets": {d.name: d for d in (small, fashion_small) if d is not None}, "experiments": experiments,
            "queue": queue, "shown": shown, "registry": (registry_first, registry_again), "plots": plots,
        }  # fmt: skip
    finally:
        httpd.shutdown()


REAPER = """
import pathlib, sys, time
from pipeline import tracking
n = 0
while not pathlib.Path(sys.argv[2]).exists():
    tracking.reap_orphans(sys.argv[1])
    n += 1
    time.sleep(0.1)  # a polling interval, not a race to win
print(n)
"""


def sweep_children(repo: Path) -> list:
    client = store(repo)
    exp = client.get_experiment_by_name("mnist-cnn")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    return [parent] + [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_dvc_repro_runs_four_stages_into_one_finished_run(project):
    repo = project["repo"]
    assert ran(project["first"]) == ["download", "preprocess", "train", "evaluate"]
    metrics = json.loads(project["outputs_before"]["reports/metrics.json"])
    run = project["train_before"]
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.params["train.subset"] == "300" and run.data.tags["dvc"] == "true"
    assert run.data.params["dataset.name"] == "mnist_small" and metrics["test_samples"] == 1000
    assert run.info.run_name == "mnist_small-adam-lr0.001-bs32"
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])
    exp = store(repo).get_experiment(run.info.experiment_id)
    assert exp.artifact_location == (repo / "mlruns").as_uri()  # the store's files beside the store
    record = json.loads((repo / "models" / "mlflow_run.json").read_text())
    assert (
        record["run_id"] == run.info.run_id
        and store(repo).get_logged_model(record["model_id"]).source_run_id == run.info.run_id
    )


def test_the_app_never_writes_dvc_outputs(project):
    repo = project["repo"]
    assert "up to date" in project["status"].stdout.lower() or project["status"].stdout.strip() == "", project[
        "status"
    ].stdout
    assert ran(project["noop"]) == []
    for path, before in project["outputs_before"].items():
        if path != "reports/metrics.json":  # rewritten by the re-evaluation, with the same numbers
            assert (repo / path).read_bytes() == before, path


def test_each_sweep_job_trains_and_tests_on_its_own_data(project):
    from pipeline.data.prepare import locations

    repo = project["repo"]
    parent, *children = sweep_children(repo)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        dataset = project["datasets"][child.data.tags["dataset"]]
        # The job's data folder is the one named by its own dataset's content (and the preparing code)...
        assert Path(child.data.tags["data_dir"]) == locations(dataset, repo / ".cache" / "data")[1].resolve()
        # ...and holds that dataset's test labels.
        labels = Path(dataset.mirrors[0]) / dataset.files["test_labels"].file
        expected = np.frombuffer(gzip.decompress(labels.read_bytes()), np.uint8, offset=8)
        assert np.array_equal(load_split(child.data.tags["data_dir"], "test")[1], expected)
    if len(project["datasets"]) == 2:
        assert {c.data.tags["dataset"] for c in children} == {"mnist_small", "fashion_small"}
        assert len({c.data.tags["data_digest"] for c in children}) == 2


def test_runs_end_finished_while_other_processes_reap(project):
    runs = sweep_children(project["repo"])
    assert [r.info.status for r in runs] == ["FINISHED"] * len(runs)
    assert all(n > 10 for n in project["reaps"]), project["reaps"]  # the reapers were really busy meanwhile
    assert not list((project["repo"] / "mlflow.db-running").glob("*.json"))  # no record outlives its run


def test_queued_experiments_log_to_the_project_store_and_are_shown(project):
    """DVC runs queued experiments in temporary copies; their runs land in the project's store (found via
    $DVC_ROOT), and `dvc exp show` lists each with its params and metrics."""
    repo, names = project["repo"], project["experiments"]
    assert len(names) == 1 and all(re.search(rf"{re.escape(n)}\s+.*\bSuccess\b", project["queue"]) for n in names)
    stray = [p for p in repo.rglob("mlflow.db") if p != repo / "mlflow.db"]
    assert not stray, f"runs logged outside the project root's store: {stray}"
    client = store(repo)
    exp = client.get_experiment_by_name("mnist-cnn")
    runs = {r.data.tags.get("dvc_exp_name"): r for r in client.search_runs([exp.experiment_id])}
    shown = {
        rev["name"]: rev["data"]
        for entry in project["shown"]
        for group in entry.get("experiments") or []
        for rev in group["revs"]
    }
    assert {runs[n].data.params["optimizer.name"] for n in names} == {"rmsprop"}
    for name in names:
        run, data = runs[name], shown[name]
        assert run.info.status == "FINISHED" and run.data.tags["dvc"] == "true"
        assert run.info.run_name == name  # a DVC experiment's run carries the experiment's name
        assert data["params"]["params.yaml"]["data"]["optimizer"]["name"] == run.data.params["optimizer.name"]
        assert data["metrics"]["reports/metrics.json"]["data"]["test_accuracy"] == pytest.approx(
            run.data.metrics["test_accuracy"]
        )


def test_a_re_evaluation_gets_its_own_run_and_the_trained_run_stays_history(project):
    repo = project["repo"]
    assert ran(project["reevaluated"]) == ["evaluate"]
    before, client = project["train_before"], store(repo)
    after = client.get_run(before.info.run_id)
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert after.data.metrics == before.data.metrics and after.data.tags == before.data.tags
    assert len(client.get_metric_history(before.info.run_id, "test_accuracy")) == len(project["history_before"]) == 1
    evaluation = json.loads((repo / "reports" / "mlflow_eval.json").read_text())
    assert evaluation["train_run_id"] == before.info.run_id and evaluation["run_id"] != before.info.run_id
    run = client.get_run(evaluation["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == before.info.run_id and run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == before.data.metrics["test_accuracy"]
    model = client.get_logged_model(evaluation["model_id"])
    assert {m.run_id for m in model.metrics if m.key == "test_accuracy"} == {before.info.run_id, run.info.run_id}


def test_every_evaluation_goes_through_the_registry_gate(project):
    """dvc repro's model becomes the first champion; re-evaluating it keeps its version; the queued
    experiment and the sweep's jobs are gated too, under one lock, and registered only when promoted. Each
    gated run holds three registry tags and its whole decision as registry/decision.json."""
    first, again = project["registry"]
    assert (
        first["registered"] and first["promoted"] and first["reason"] == "no champion yet" and first["version"] == "1"
    )
    assert (again["version"], again["reason"], again["promoted"]) == ("1", "already the champion", False)
    client = store(project["repo"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    gated = [r for r in client.search_runs(experiments) if "registry.promoted" in r.data.tags]
    decisions = {}
    for run in gated:
        assert {k for k in run.data.tags if k.startswith("registry.")} == {
            "registry.promoted", "registry.version", "registry.reason"
        }  # fmt: skip
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="registry/decision.json", tracking_uri=client.tracking_uri
        )
        decision = json.loads(Path(path).read_text())
        assert (str(decision["promoted"]), decision["version"] or "none", decision["reason"]) == (
            run.data.tags["registry.promoted"], run.data.tags["registry.version"], run.data.tags["registry.reason"]
        )  # fmt: skip
        decisions[run.info.run_id] = decision
    mnist = [d for d in decisions.values() if d["model"] == "mnist_small-cnn"]
    # dvc repro's model and its re-evaluation, the queued experiment's, the sweep's mnist_small jobs
    sweep_jobs = [c for c in sweep_children(project["repo"])[1:] if c.data.tags["dataset"] == "mnist_small"]
    assert len(mnist) == 3 + len(sweep_jobs)
    versions = client.search_model_versions("name='mnist_small-cnn'")
    promoted = sorted(int(d["version"]) for d in mnist if d["promoted"])
    assert sorted(int(v.version) for v in versions) == promoted  # the registry: the promoted models, no other
    assert all(d["version"] is None for d in mnist if not d["promoted"] and d["reason"] != "already the champion")
    for version in versions:
        full = client.get_model_version("mnist_small-cnn", version.version)
        gate_tags = {k for k in full.tags if k.startswith("registry.")}
        assert {"registry.eval_run_id", "registry.test_digest"} <= gate_tags <= {
            "registry.eval_run_id", "registry.test_digest", "registry.accuracy", "registry.reason"
        }  # fmt: skip
        assert {"export.tflite", "export.onnx"} <= set(full.tags)  # each champion's portable files
    champion = client.get_model_version_by_alias("mnist_small-cnn", "champion")
    assert str(champion.version) == str(max(promoted))  # the last promotion holds the alias
    assert "already exists" not in project["printed"]


def test_dvc_plots_render_offline(project):
    """`dvc plots show` uses the project's template (.dvc/config): Vega inline, no CDN."""
    page = (project["repo"].parent / "plots" / "index.html").read_text()
    assert "<script src=" not in page and "vega-lite@5.2.0" in page
    assert "vegaEmbed('#training_curve'" in page and '"title": "training step"' in page  # the curve, its axes
    assert "history.csv" not in page  # one epoch is one point: no per-epoch plot (reports/epochs/ is empty)


def test_changing_the_optimizer_reruns_training_not_the_data_stages(project):
    # train's params changed; evaluate follows from train's new outputs; download and preprocess stay cached.
    assert list(project["changed"]) == ["train"], project["changed"]
    assert project["changed"]["train"] == [{"changed deps": {"params.yaml": {"optimizer": "modified"}}}]


def test_no_credential_reaches_anything_written_or_printed(project):
    repo = project["repo"]
    # params.yaml is the user's own file (to keep out of git when it holds a secret): the one exception.
    files = [p for p in written_files(repo) if p != repo / "params.yaml"]
    names = {str(p.relative_to(repo)).split("/")[0] for p in files}
    assert {"dvc.lock", "mlflow.db", "mlruns", "multirun", ".cache", "data", "models", "reports"} <= names
    assert_nowhere(SECRETS, files, project["printed"])
    assert "***@127.0.0.1" in project["printed"]  # the mirrors were logged, masked


@pytest.mark.slow
def test_full_default_pipeline(tmp_path, mirror):
    """`make run`'s `dvc repro` with the seed's defaults on all 60,000 images: >= 0.98, reproduced by pyfunc."""
    repo = copy_repo(tmp_path / "repo", exports=True)  # the default pipeline, as a user runs it
    start = time.perf_counter()
    proc = dvc(repo, stage_env(mirror), "repro")
    assert ran(proc) == ["download", "preprocess", "train", "evaluate"]
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    print(f"full pipeline: {time.perf_counter() - start:.1f} s, {metrics}")
    assert metrics["test_accuracy"] >= 0.98
    record = json.loads((repo / "models" / "mlflow_run.json").read_text())
    client = store(repo)
    run = client.get_run(record["run_id"])
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["train_samples"] == 60000
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{record['model_id']}")
    x, y = load_split(repo / "data" / "processed", "test")
    # the served contract: a list of instances, an answer each, at most MAX_BATCH per call
    labels = [int(a["label"]) for i in range(0, len(x), MAX_BATCH) for a in model.predict(list(x[i : i + MAX_BATCH]))]
    assert float((np.array(labels) == y).mean()) == metrics["test_accuracy"]


@pytest.mark.slow
def test_make_ui_lists_the_runs_metrics_and_models_through_its_rest_api(project):
    """`make ui` on 127.0.0.1, queried as the UI's page queries it, then stopped."""
    import os
    import signal
    import urllib.request

    from pipeline.server.manage import free_port
    from tests.integration.test_serve_contract import wait_for

    repo, port, venv = project["repo"], free_port(), Path(sys.executable).parent.parent
    ui = subprocess.Popen(["make", "-o", f"{venv}/.installed", "ui", f"PORT={port}", f"VENV={venv}"], cwd=repo, env=stage_env(Path("/nonexistent")),
                          start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"

    def api(path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{base}/{path}", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        wait_for(f"http://127.0.0.1:{port}/health", ui)
        experiment = api("experiments/get-by-name?experiment_name=mnist-cnn")["experiment"]
        assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        runs = api("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        finished = [r for r in runs if r["info"]["status"] == "FINISHED"]
        assert len(finished) == len(runs) >= 6  # dvc repro, re-evaluation, queued experiment, sweep parent + 2 jobs
        trained = project["train_before"]
        shown = next(r for r in runs if r["info"]["run_id"] == trained.info.run_id)
        metrics = {m["key"]: m["value"] for m in shown["data"]["metrics"]}
        assert metrics["test_accuracy"] == trained.data.metrics["test_accuracy"]
        assert {i["dataset"]["name"] for i in shown["inputs"]["dataset_inputs"]} == {
            "mnist_small-train[:300]",
            "mnist_small-test",
        }
        models = api("logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
        assert len(models) >= 4 and all(m["info"]["status"] == "LOGGED_MODEL_READY" for m in models)
        champion = api("registered-models/alias?name=mnist_small-cnn&alias=champion")["model_version"]
        assert champion["version"] == "1"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="apt-get install chromium (.ci/run does)")
def test_the_screenshot_script_renders_the_ui_pages(project, tmp_path):
    """tools/ui_screenshots.py over the scenario's store: the runs list, a sweep compared, a run's pages, the
    champion's registry version with its model card, its confusion matrix, the DVC plots."""
    from PIL import Image

    tool = Path(__file__).resolve().parents[2] / "tools" / "ui_screenshots.py"
    proc = subprocess.run([sys.executable, str(tool), "--project", str(project["repo"]), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=stage_env(Path("/nonexistent")))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert names == {
        "ui-runs", "ui-sweep-compare", "ui-run", "ui-run-metrics", "ui-model-card", "confusion-matrix", "dvc-plots"
    }  # fmt: skip
    for path in tmp_path.glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.std() > 10, f"{path.name} looks blank"  # the page rendered


def test_each_experiment_leads_to_its_mlflow_run_and_the_run_back_to_its_dvc_lock(project):
    """dvc exp show has the evaluation's MLflow run id (paths.eval_info, a cached metrics file); the training run
    carries the DVC experiment's name, the git revision and the model's hash as dvc.lock records it."""
    repo, shown, client = project["repo"], project["shown"], store(project["repo"])
    experiment = next(
        exp for row in shown for exp in (row.get("experiments") or []) if exp.get("name") in project["experiments"]
    )
    data = experiment["revs"][0]["data"]
    eval_run = data["metrics"]["reports/mlflow_eval.json"]["data"]["run_id"]
    run = client.get_run(eval_run)
    assert run.data.tags["dvc_exp_name"] == experiment["name"]
    train_run = client.get_run(data["metrics"]["reports/mlflow_eval.json"]["data"]["train_run_id"])
    assert train_run.data.tags["dvc_exp_name"] == experiment["name"] and train_run.data.tags["git_commit"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    model = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.keras")
    workspace_train = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(workspace_train).data.tags["dvc_model_md5"] == model["md5"]
    for version in client.search_model_versions("name='mnist_small-cnn'"):
        trained = client.get_run(version.run_id).data.tags
        lineage = ("git_commit", "dvc_exp_name", "dvc_model_md5")
        assert version.tags["git_commit"] and all(version.tags.get(k) == trained.get(k) for k in lineage)
