"""The team's set-up, for real: a PostgreSQL cluster, `mlflow server` on it with proxied artifacts in an
S3-compatible object store (moto's server on 127.0.0.1), a second server on the same database and bucket
behind MLflow's basic-auth app, and DVC remotes (a folder, and S3 on the same object store).

The services start once for the module (``pipeline.server.manage.start``, what ``make server`` runs) and stop at
its end. One copy of the repository, set to the small real subset of MNIST, is the team's project: each
test checks one promise a team relies on. Where PostgreSQL is not installed the module is skipped, except
under ``REQUIRE_SERVICES=1`` (``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.config import plain as plain_data
from pipeline.core.errors import UserError
from pipeline.data.formats import load_split
from pipeline.server.manage import free_port, pg_binary, start, stop
from tests.conftest import copy_repo, stage_env
from tests.integration.test_dvc import add_datasets, dvc, ran
from tests.integration.test_run import assert_nowhere, written_files

pytestmark = pytest.mark.services  # make test-services (and CI); not in the quick `make test`

REQUIRE = os.environ.get("REQUIRE_SERVICES") == "1"
ADMIN_PASSWORD = "admin-pw-team-5821"
ALICE_PASSWORD = "alice-pw-team-7713"
S3_SECRET = "s3-secret-team-3391"
BUCKET = "team"


def _need(what: str) -> None:
    (pytest.fail if REQUIRE else pytest.skip)(f"{what} (REQUIRE_SERVICES=1 makes this a failure)")


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with one bucket, which holds both MLflow's artifacts and DVC's data."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError:
        _need("moto[server] and boto3 are not installed (pip install -e '.[dev]')")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "team-key-id", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        _wait(endpoint)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(endpoint=endpoint, env=env, client=client)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bucket_keys(s3, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="module")
def servers(s3):
    """`make server` (its PostgreSQL cluster, artifacts proxied to s3://team/mlflow), and a second server on the
    same database and bucket behind basic-auth, its database given by URL as a team's DBA would."""
    try:
        pg_binary("initdb")
    except UserError:
        _need("PostgreSQL is not installed (apt-get install postgresql)")
    # PostgreSQL runs as user postgres when the tests run as root: its folder must be reachable (not 0700).
    base = Path(tempfile.mkdtemp(prefix="team-", dir="/tmp"))
    base.chmod(0o755)
    server_env = {**os.environ, **s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    server_env = {k: v for k, v in server_env.items() if not k.startswith("MLFLOW_TRACKING_")}
    try:
        plain = start(
            base / "plain", port=free_port(), artifacts=f"s3://{BUCKET}/mlflow", workers=1, environ=server_env
        )
        db_password = (base / "plain" / "postgres.password").read_text().strip()
        database = f"postgresql://mlflow:{db_password}@127.0.0.1:{plain.pg_port}/mlflow"
        auth = start(base / "auth", port=free_port(), backend=database, artifacts=f"s3://{BUCKET}/mlflow", auth=True,
                     workers=1, environ={**server_env, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})  # fmt: skip
        yield SimpleNamespace(plain=plain, auth=auth, base=base, db_password=db_password)
    finally:
        stop(base / "auth")
        stop(base / "plain")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def team(tmp_path_factory, mnist_small, servers, s3):
    """The team's repository on the small subset, `dvc repro` logged to the plain server; what it printed."""
    small, _ = mnist_small
    repo = copy_repo(tmp_path_factory.mktemp("team") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"] = plain_data(small)
    params["train"].update(subset=300, verbose="silent")
    params["registry"]["name"] = f"{small.name}-cnn"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    add_datasets(repo, small)  # conf/dataset/mnist_small.yaml for the Hydra app; commits params.yaml too
    env = stage_env(Path(small.mirrors[0]), DATA_MIRROR="", MLFLOW_TRACKING_URI=servers.plain.uri)
    first = dvc(repo, env, "repro")
    return SimpleNamespace(repo=repo, env=env, uri=servers.plain.uri, printed=[first.stdout, first.stderr], small=small)


def app_args(team) -> list[str]:
    """The Hydra app on the same small data as the DVC stages."""
    return [f"dataset={team.small.name}", "train.subset=300", "train.verbose=silent"]


def champion_model(team):
    """The champion, loaded through the server (``models:/<name>@champion``)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(team.uri)
    try:
        from pipeline.tracking import load_keras_model  # the raw network: predict(x) gives probabilities

        return load_keras_model(f"models:/{team.small.name}-cnn@champion")
    finally:
        mlflow.set_tracking_uri(previous)


def client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri)


# --------------------------------------------------------------------------- the tracking server


def test_dvc_repro_logs_run_metrics_model_and_champion_through_the_server(team, s3):
    repo, c = team.repo, client(team.uri)
    record = json.loads((repo / "models" / "mlflow_run.json").read_text())
    run = c.get_run(record["run_id"])
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert run.data.params["train.subset"] == "300"
    champion = c.get_model_version_by_alias(f"{team.small.name}-cnn", "champion")
    assert champion.source == f"models:/{record['model_id']}" and champion.run_id == run.info.run_id
    # The model comes back through the server (mlflow-artifacts:/ proxied to S3) and scores as reported.
    model = champion_model(team)
    x, y = load_split(repo / "data" / "processed", "test")
    accuracy = float(np.mean(np.argmax(model.predict(x), axis=1) == y))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    # Artifacts live in the object store, none on the client's disk; no SQLite store anywhere in the project.
    keys = bucket_keys(s3, "mlflow/")
    assert any(k.endswith("model.keras") or "/model/" in k or "MLmodel" in k for k in keys), keys[:20]
    assert any(k.endswith("eval/predictions.npz") for k in keys)
    assert not list(repo.rglob("*.db")) and not (repo / "mlruns").exists()


def test_a_sweep_logs_parent_children_and_table_through_the_server(team):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "-m", "optimizer=sgd,adam", *app_args(team)],
        cwd=team.repo, env=team.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    team.printed += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent_id = re.search(r"MLflow parent run (\w+)", proc.stdout + proc.stderr).group(1)
    c = client(team.uri)
    parent = c.get_run(parent_id)
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert parent.info.status == "FINISHED" and sorted(r.data.tags["optimizer"] for r in children) == ["adam", "sgd"]
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children)
    assert {"sweep_results.md", "sweep_results.csv"} <= {a.path for a in c.list_artifacts(parent_id)}
    assert parent.data.metrics["best_test_accuracy"] == max(r.data.metrics["test_accuracy"] for r in children)
    assert not list(team.repo.rglob("*.db"))


def test_predict_reads_the_champion_through_the_server(team, tmp_path):
    from PIL import Image

    x, _ = load_split(team.repo / "data" / "processed", "test")
    for i in range(3):
        Image.fromarray((x[i, ..., 0] * 255).astype(np.uint8)).save(tmp_path / f"digit{i}.png")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", *(str(tmp_path / f"digit{i}.png") for i in range(3))],
        cwd=team.repo, env=team.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [int(d) for d in re.findall(r"digit\d\.png: (\d) \(p=", proc.stdout)]
    assert printed == list(np.argmax(champion_model(team).predict(x[:3]), axis=1))


# --------------------------------------------------------------------------- login


def auth_env(team, servers, user: str | None, password: str | None) -> dict[str, str]:
    env = {**team.env, "MLFLOW_TRACKING_URI": servers.auth.uri}
    if user:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
    return env


def test_a_wrong_password_gives_one_clear_line_and_no_traceback(team, servers, tmp_path):
    wrong = "wrong-pw-team-0042"
    repo = tmp_path / "repo"  # the train stage starts by removing its outputs, as DVC does: not the team's
    shutil.copytree(team.repo, repo, symlinks=True)
    for command in (["pipeline.stages.train"], ["pipeline.run", *app_args(team)]):
        for user, password in (("admin", wrong), (None, None)):
            proc = subprocess.run([sys.executable, "-m", *command], cwd=repo, capture_output=True, text=True,
                                  env=auth_env(team, servers, user, password), timeout=300)  # fmt: skip
            out = proc.stdout + proc.stderr
            assert proc.returncode == 2, out[-3000:]
            assert f"error: MLflow server {servers.auth.uri} refused the login (HTTP 401)" in out
            assert "Traceback" not in out and wrong not in out
            team.printed.append(out)


def test_a_member_logs_once_the_admin_grants_access_and_no_secret_is_stored(team, servers, s3, tmp_path):
    from mlflow.server import get_app_client

    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    os.environ.update(admin)  # the auth client reads the admin's login from the environment
    users = get_app_client("basic-auth", tracking_uri=servers.auth.uri)
    users.create_user("alice", ALICE_PASSWORD)
    alice = auth_env(team, servers, "alice", ALICE_PASSWORD)
    run_app = [sys.executable, "-m", "pipeline.run", "optimizer=rmsprop", *app_args(team)]

    # The experiment and the registered model were made by another user: READ only, until the admin grants.
    denied = subprocess.run(run_app, cwd=team.repo, env=alice, capture_output=True, text=True, timeout=600)
    assert denied.returncode == 2, denied.stderr[-3000:]
    assert "user 'alice' is not allowed to do this (HTTP 403)" in denied.stderr and "Traceback" not in denied.stderr
    experiment = client(team.uri).get_experiment_by_name("mnist-cnn")
    users.grant_user_permission("alice", "experiment", experiment.experiment_id, "EDIT")
    users.grant_user_permission("alice", "registered_model", f"{team.small.name}-cnn", "EDIT")

    allowed = subprocess.run(run_app, cwd=team.repo, env=alice, capture_output=True, text=True, timeout=600)
    team.printed += [denied.stdout, denied.stderr, allowed.stdout, allowed.stderr]
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    run_id = re.search(r"run (\w{32}): test_accuracy", allowed.stdout + allowed.stderr).group(1)
    run = client(team.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.user_id == "alice" and run.data.tags["mlflow.user"] == "alice"

    # No password, key or database password in the database (both stores), the bucket, the servers' files
    # and logs, the project's written files, or anything printed.
    secrets = {"admin": ADMIN_PASSWORD, "alice": ALICE_PASSWORD, "s3": S3_SECRET, "db": servers.db_password}
    dumps = []
    for database in ("mlflow", "mlflow_auth"):
        dump = tmp_path / f"{database}.sql"
        subprocess.run([pg_binary("pg_dump"), "-h", "127.0.0.1", "-p", str(servers.plain.pg_port), "-U", "mlflow",
                        "-f", str(dump), database], env={**os.environ, "PGPASSWORD": servers.db_password},
                       check=True)  # fmt: skip
        dumps.append(dump)
    assert "alice" in dumps[1].read_text()  # the dump is real: the user is there, as a salted hash
    objects = tmp_path / "bucket"
    for key in bucket_keys(s3, ""):
        (objects / key).parent.mkdir(parents=True, exist_ok=True)
        s3.client.download_file(BUCKET, key, str(objects / key))
    # The servers' state: logs, records, the auth app's ini (not the cluster's files: the dumps cover those),
    # less the generated secrets' own files (mode 0600).
    generated = ("postgres.password", "admin_password", "flask_secret_key")
    server_files = [p for p in servers.base.glob("*/*") if p.is_file() and p.name not in generated]
    files = [*dumps, *[p for p in objects.rglob("*") if p.is_file()], *server_files, *written_files(team.repo)]
    assert len(files) > 20
    assert_nowhere(secrets, files, "\n".join(team.printed))


# --------------------------------------------------------------------------- DVC remotes


def tree_digest(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def commit(repo: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)  # dvc.lock, the remote, metrics and plots
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo, check=True)


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_dvc_push_then_a_fresh_clone_pulls_and_reproduces_nothing(team, s3, tmp_path, kind):
    repo, env = team.repo, {**team.env, **s3.env}
    name = f"team-{kind}"
    if kind == "folder":
        dvc(repo, env, "remote", "add", "-f", name, str(tmp_path / "remote"))
    else:
        dvc(repo, env, "remote", "add", "-f", name, f"s3://{BUCKET}/dvc")
        dvc(repo, env, "remote", "modify", name, "endpointurl", s3.endpoint)
    dvc(repo, env, "push", "-r", name)
    commit(repo, f"remote {name}")
    assert S3_SECRET not in (repo / ".dvc" / "config").read_text()
    if kind == "s3":  # one object store: MLflow's artifacts and DVC's data side by side
        assert bucket_keys(s3, "dvc/") and bucket_keys(s3, "mlflow/")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    dvc(clone, env, "pull", "-r", name)
    again = dvc(clone, env, "repro")
    assert ran(again) == [] and "Data and pipelines are up to date" in again.stdout
    for path in ("models/model.keras", "reports/metrics.json", "data/processed/train.npz", "data/processed/test.npz"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path


@pytest.mark.parametrize("fault", ["unreachable", "no such bucket"])
def test_a_push_to_a_broken_remote_fails_clearly_and_loses_nothing(team, s3, fault):
    repo, env = team.repo, {**team.env, **s3.env, "AWS_MAX_ATTEMPTS": "2"}
    name = "broken"
    if fault == "unreachable":
        dvc(repo, env, "remote", "add", "-f", name, f"s3://{BUCKET}/dvc")
        dvc(repo, env, "remote", "modify", name, "endpointurl", f"http://127.0.0.1:{free_port()}")
    else:
        dvc(repo, env, "remote", "add", "-f", name, "s3://no-such-bucket/dvc")
        dvc(repo, env, "remote", "modify", name, "endpointurl", s3.endpoint)
    before = tree_digest(repo / ".dvc" / "cache", repo / "models", repo / "data", repo / "reports")
    started = time.monotonic()
    proc = subprocess.run(["dvc", "push", "-r", name], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    expected = (
        "Could not connect to the endpoint URL" if fault == "unreachable" else "The specified bucket does not exist"
    )
    assert "ERROR" in out and expected in out and "Traceback" not in out, out[-2000:]
    assert elapsed < 120, f"took {elapsed:.0f} s"
    assert tree_digest(repo / ".dvc" / "cache", repo / "models", repo / "data", repo / "reports") == before
    dvc(repo, env, "remote", "remove", name)


@pytest.mark.slow
def test_mlflow_models_serve_resolves_the_champion_through_the_server(team, tmp_path):
    """`make serve` against the team's server: `models:/<name>@champion` is looked up and downloaded through it."""
    from tests.integration.test_serve_contract import wait_for

    port = free_port()
    command = [sys.executable, "-m", "pipeline.tracking", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, cwd=team.repo, env=team.env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server)
        x, _ = load_split(team.repo / "data" / "processed", "test")
        body = json.dumps({"inputs": x[:5].astype(float).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            served = [int(a["label"]) for a in json.loads(response.read())["predictions"]]
        assert served == list(np.argmax(champion_model(team).predict(x[:5], verbose=0), axis=1))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert not list(team.repo.rglob("*.db")) and not list(tmp_path.rglob("*.db"))
