"""A sweep through Hydra's Ray launcher on a real two-node Ray cluster on this machine, logging to an MLflow
server on PostgreSQL (``pipeline.server.manage``, what ``make server`` runs) and to the project's SQLite store.

Neither node runs in the project: each runs in an empty folder of its own, with no ``DATA_MIRROR`` and no MLflow
setting in its environment, as machines that share no filesystem with the one the sweep starts from would. Each
node is a ``ray start --block`` process of its own (stopped by its pid at the end, never ``ray stop``, which
stops every Ray node of the machine); the sweep is a process of its own too (the Ray driver), run from a copy of
the repository as a user runs it. The cluster and the server start once for the module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from pipeline.core.errors import UserError
from pipeline.server.manage import free_port
from tests.conftest import stage_env
from tests.integration.conftest import share_prepared_data
from tests.integration.test_run import logged_models, printed_table, split_parent

pytestmark = pytest.mark.services  # make test-services (and CI); not in the quick `make test`

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")
RAY = Path(sys.executable).parent / "ray"
STARTED = "Ray runtime started"


@dataclass
class Cluster:
    address: str
    head_dir: Path  # where the head node's workers run: a folder of their own
    worker_dir: Path  # where the other node's workers run: another
    auth: dict[str, str]  # the environment that lets a process join the cluster (its token)


def start_node(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start --block ARGS`` in its own process group; returns once the node is up."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", *args],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while STARTED not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return proc


def stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM makes ``ray start --block`` drain the node and end the processes it started; whatever of its
    own process group is left after that is killed."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_cluster(mirror, tmp_path_factory) -> Iterator[Cluster]:
    """A head node (1 CPU, resource ``head``) and a worker node (1 CPU, resource ``worker``), each started in an
    empty folder, the cluster reached at 127.0.0.1:PORT."""
    # Ray's Unix sockets live under its temp folder: tmp_path is too long for their ~107-character limit.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    base = tmp_path_factory.mktemp("ray-nodes")
    head_dir, worker_dir = base / "head-node", base / "worker-node"
    head_dir.mkdir()
    worker_dir.mkdir()
    port = free_port()
    # Token authentication, as on a real cluster (Ray turns it on by itself once ~/.ray/auth_token exists):
    # every node and the sweep's driver hold the cluster's token; none is read from the home folder.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    node_env = {k: v for k, v in stage_env(mirror, **auth).items() if k != "DATA_MIRROR"}
    nodes = []
    try:
        nodes.append(
            start_node(
                ["--head", f"--port={port}", "--num-cpus=1", '--resources={"head": 1}',
                 f"--temp-dir={temp}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"],
                head_dir, node_env, base / "head.log",
            )
        )  # fmt: skip
        nodes.append(
            start_node(
                [f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"worker": 1}'],
                worker_dir, node_env, base / "worker.log",
            )
        )  # fmt: skip
        yield Cluster(f"127.0.0.1:{port}", head_dir, worker_dir, auth)
    finally:
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server() -> Iterator[str]:
    """``mlflow server`` on a PostgreSQL cluster of its own, artifacts proxied to a folder; its URI."""
    from pipeline.server.manage import pg_binary, start, stop

    try:
        pg_binary("initdb")
    except UserError:  # as in test_team.py: a failure under REQUIRE_SERVICES=1 (.ci/run), else a skip
        missing = "PostgreSQL is not installed (apt-get install postgresql)"
        (pytest.fail if os.environ.get("REQUIRE_SERVICES") == "1" else pytest.skip)(missing)
    base = Path(tempfile.mkdtemp(prefix="ray-server-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as user postgres when the tests run as root
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    try:
        yield start(base / "server", port=free_port(), workers=1, environ=environ).uri
    finally:
        stop(base / "server")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("where", ["server", "sqlite"])
def test_a_sweep_runs_as_ray_tasks_on_both_nodes_under_one_parent_run(
    where,
    request,
    ray_cluster,
    repo_copy,
    mirror,
    small_conf,
):
    """``server``: MLFLOW_TRACKING_URI names the server where the sweep starts, and nowhere on the nodes.
    ``sqlite``: the project's own ``sqlite:///mlflow.db``, a path relative to the project, which the nodes'
    folders do not hold."""
    share_prepared_data(repo_copy)  # the sweep's own check of the data, where it starts; the nodes have none
    uri = request.getfixturevalue("tracking_server") if where == "server" else f"sqlite:///{repo_copy / 'mlflow.db'}"
    env = stage_env(mirror, **ray_cluster.auth, **({"MLFLOW_TRACKING_URI": uri} if where == "server" else {}))
    args = [
        "-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_cluster.address}",
        "optimizer=sgd,adam", "train.subset=300", "train.verbose=silent",
        f"hydra.searchpath=[file://{small_conf}]", "dataset=mnist_small",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=repo_copy, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    print(f"sweep of 2 jobs through Ray ({where}): {time.monotonic() - start:.1f} s")

    # Both jobs logged into the sweep's store, under its parent, though no node's environment names a store.
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-cnn")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent, children = split_parent(runs)
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.status == "FINISHED" and parent.data.metrics["child_runs"] == 2
    assert parent.data.tags["hydra_launcher"] == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert {c.data.tags["optimizer"] for c in children} == {"sgd", "adam"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0.0 <= child.data.metrics["test_accuracy"] <= 1.0
        assert len(logged_models(client, child)) == 1

    # One job on each node: two Ray nodes, each job's outputs and data in its own node's folder.
    assert len({c.data.tags["ray_node_id"] for c in children}) == 2
    ips = {c.data.tags["ray_node_ip"] for c in children}  # Ray gives a node on 127.0.0.1 the host's address
    assert len(ips) == 1 and socket.inet_aton(ips.pop())
    by_node = {Path(c.data.tags["hydra_output_dir"]).parents[3]: c for c in children}
    assert set(by_node) == {ray_cluster.head_dir, ray_cluster.worker_dir}, by_node.keys()
    # No node had DATA_MIRROR or could see the project's data: each downloaded the dataset from its configured
    # mirror into its own cache, verified to the same content.
    for folder, child in by_node.items():
        assert Path(child.data.tags["data_dir"]).is_relative_to(folder / ".cache" / "data")
        assert len(list((folder / ".cache" / "data" / "raw").glob("mnist_small-*/*-ubyte"))) == 4
    assert len({c.data.tags["data_digest"] for c in children}) == 1

    # The results table, printed and logged on the parent, as with the basic launcher.
    table = printed_table(out)
    assert [row[0] for row in table] == [
        c.data.tags["overrides"] for c in sorted(children, key=lambda c: -c.data.metrics["test_accuracy"])
    ]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_results.md", "sweep_results.csv", "sweep_results.json"} <= artifacts


def test_the_joblib_and_ray_launchers_install_together():
    """The `ray` extra's launcher pins cloudpickle < 3 and joblib 1.6 wants cloudpickle >= 3: the extra holds
    joblib below 1.6 (its own copy of cloudpickle), so both launchers' requirements hold at once. The joblib
    launcher's sweep runs in tests/integration/test_dvc.py, in this same environment."""
    from importlib import metadata

    from packaging.requirements import Requirement

    for dist in ("hydra-ray-launcher", "hydra-joblib-launcher", "joblib", "ray"):
        for text in metadata.requires(dist) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert metadata.version(req.name) in req.specifier, (dist, text, metadata.version(req.name))
    assert metadata.version("cloudpickle").startswith("2.")  # hydra-ray-launcher 1.2.2 pins cloudpickle<3
