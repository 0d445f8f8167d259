"""Two machines gating into one tracking server at the same moment: the alias ends on the clearly better model.

Two processes with separate lock folders (``XDG_CACHE_HOME``: the registry's file lock lives in the per-user
cache for a server) stand in for two machines; they share nothing but ``mlflow server --backend-store-uri
sqlite:///...`` on 127.0.0.1. Each has a model to gate against the champion v1 (accuracy 0.90 on 1,000 shared
test images): A, clearly better (0.98), and B, slightly better (0.94); either beats v1 alone, and A beats B.

The gate calls :func:`pipeline.tracking.registry.checkpoint` at each of its steps (start, decided, registered,
then listed and moved per round of its settle); here each process replaces it with a wait on a file the test
creates, so the test releases the two gates step by step in a forced order: one gate whole and then the other,
both deciding against v1 and then registering and settling in either order, the write that lands after the
other gate has finished, and both released at once with no further stop. In every order the alias ends on A.
The models are LoggedModels without weights, as in tests/integration/test_registry.py (the gate reads their
evaluations' predictions).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.tracking import registry
from tests.conftest import ROOT
from tests.integration.test_registry import LABELS, evaluated_model, never, registry_config

pytestmark = pytest.mark.services

ACCURACY = {"A": 0.98, "B": 0.94}  # clearly and slightly better than the champion's 0.90
SEED = {"A": 12, "B": 13}
WAIT = 90.0  # seconds a gate may take between two steps on a loaded machine

#: name -> releases in order (each letter: that gate's next step); the rest alternate A, B; None: both at once.
SCHEDULES: dict[str, str | None] = {
    "a-then-b": "AAAAA",  # A gates alone; B then reads A and is not promoted
    "b-then-a": "BBBBB",  # B promoted over v1; A then beats B
    "lockstep": "ABABABAB",  # both decide against v1, register, list and move the alias in turn
    "a-settles-before-b-registers": "AB" + "AAAA",  # B registers after A's settle ended: B's own settle moves it back
    "b-settles-before-a-registers": "AB" + "BBBB",
    # B lists before A registers; A registers, lists, moves the alias to itself and ends; B's stale write (B) lands
    # after that: B's next read finds A's version and moves the alias back to A.
    "stale-write-after-a-ended": "AB" + "BB" + "AAAA" + "B",
    "stale-write-after-b-ended": "AB" + "AA" + "BBBB" + "A",  # A's late write is A: right anyway
    "both-at-once-1": None,
    "both-at-once-2": None,
}

#: The steps as the gates reached them, where the order is the point: B's stale write of itself after A ended,
#: then B's next read and its move back to A; in lockstep, each step of one gate followed by the other's.
TRACES = {
    "race-stale-write-after-a-ended": "A:start B:start A:decided B:decided B:registered B:listed A:registered "
    "A:listed A:moved A:done B:moved B:listed B:moved B:done",
    "race-lockstep": "A:start B:start A:decided B:decided A:registered B:registered A:listed B:listed A:moved "
    "B:moved A:done B:done",
}
B_ENDS_FIRST = {"race-b-then-a", "race-b-settles-before-a-registers"}

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.integration.test_gate_race import child
child(*sys.argv[2:])
"""


def child(uri: str, who: str, sync: str, names: str) -> None:
    """One machine's gate, for every schedule in turn: its model evaluated first, then gated step by step."""
    folder = Path(sync)
    plan = json.loads(names)
    models = {name: evaluated_model(uri, ACCURACY[who], SEED[who]) for name in plan}
    for name, stepwise in plan.items():
        steps = iter(range(1000))

        def wait(step: str, name: str = name, stepwise: bool = stepwise, steps=steps) -> None:
            n = next(steps)
            if n and not stepwise:
                return
            (folder / f"{name}.{who}.{n}.{step}").touch()
            while not (folder / f"{name}.{who}.{n}.go").exists():
                time.sleep(0.02)

        registry.checkpoint = wait
        decision = registry.gate(registry_config(name), *models[name], LABELS, "shared-test-set", never)
        (folder / f"{name}.{who}.done").write_text(json.dumps(decision.as_dict()))


def reached(sync: Path, name: str, who: str, n: int) -> str | None:
    """The step that gate ``who`` waits at as its ``n``-th, or "done", or None (still running)."""
    if (sync / f"{name}.{who}.done").exists():
        return "done"
    found = [p.name.split(".")[-1] for p in sync.glob(f"{name}.{who}.{n}.*") if not p.name.endswith(".go")]
    return found[0] if found else None


def drive(sync: Path, name: str, schedule: str | None, procs: dict[str, subprocess.Popen]) -> list[str]:
    """Release the two gates of ``name`` in the order ``schedule`` says; the trace of steps as they were reached."""
    count = {"A": 0, "B": 0}
    trace: list[str] = []

    def until(who: str) -> str:
        deadline = time.monotonic() + WAIT
        while (step := reached(sync, name, who, count[who])) is None:
            if procs[who].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name}: gate {who} stopped before step {count[who]} (trace {trace})")
            time.sleep(0.02)
        return step

    for who in "AB":  # the barrier: both gates at their start, neither has read the champion
        trace.append(f"{who}:{until(who)}")
    if schedule is None:
        for who in "AB":
            (sync / f"{name}.{who}.0.go").touch()
        return trace
    for who in schedule + "AB" * 20:
        if reached(sync, name, who, count[who]) == "done":
            continue
        (sync / f"{name}.{who}.{count[who]}.go").touch()
        count[who] += 1
        trace.append(f"{who}:{until(who)}")
        if all(reached(sync, name, w, count[w]) == "done" for w in "AB"):
            return trace
    raise AssertionError(f"{name}: the gates did not finish (trace {trace})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server --backend-store-uri sqlite:///...`` on 127.0.0.1, artifacts proxied to a folder; its URI."""
    from pipeline.server.manage import free_port, wait_healthy

    base = tmp_path_factory.mktemp("race-server")
    port, log = free_port(), base / "mlflow.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as pipeline.server: no GenAI job runner
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination", (base / "a").as_uri()]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_two_machines_gating_at_once_leave_the_alias_on_the_clearly_better_model(server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-of-the-test"))
    names = {f"race-{key}": schedule for key, schedule in SCHEDULES.items()}
    champions = {name: registry.gate(registry_config(name), *evaluated_model(server, 0.90, 11), LABELS,
                                     "shared-test-set", never) for name in names}  # fmt: skip
    assert {d.version for d in champions.values()} == {"1"}
    sync = tmp_path / "sync"
    sync.mkdir()
    plan = json.dumps({name: schedule is not None for name, schedule in names.items()})
    procs = {
        who: subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ROOT), server, who, str(sync), plan],
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"machine-{who}")},  # a lock folder each
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for who in "AB"
    }
    client = mlflow.MlflowClient(server)
    try:
        for name, schedule in names.items():
            trace = drive(sync, name, schedule, procs)
            deadline = time.monotonic() + WAIT
            while not all((sync / f"{name}.{who}.done").exists() for who in "AB"):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), name
                time.sleep(0.05)
            a, b = (json.loads((sync / f"{name}.{who}.done").read_text()) for who in "AB")
            holder = str(client.get_model_version_by_alias(name, "champion").version)
            assert holder == a["version"], f"{name}: the alias is on v{holder}, A is v{a['version']} (trace {trace})"
            assert a["promoted"], name
            if name in TRACES:
                assert " ".join(trace) == TRACES[name], name
            # B was promoted where it ended before A registered (A displaced it later, as one at a time); where it
            # lost the conflict, its version stays, not the champion.
            if schedule is not None:
                assert b["promoted"] == (name in B_ENDS_FIRST), (name, b)
            if not b["promoted"] and b["version"] is not None:
                assert b["settled"].endswith(
                    (
                        f"v{a['version']} holds the alias",
                        f"v{a['version']}, replayed after v{b['version']}, holds the alias",
                    )
                ), (name, b["settled"])
            versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
            assert versions == sorted(["1", *(d["version"] for d in (a, b) if d["version"])]), name
    finally:
        for who, proc in procs.items():
            try:
                output = proc.communicate(timeout=WAIT)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                output = proc.communicate()[0]
            print(f"gate {who}:", output[-3000:])  # shown when the test fails
    assert [p.returncode for p in procs.values()] == [0, 0]
