"""Who owns a run in progress, so that a run whose process died (SIGKILL, power loss) is marked KILLED, never
left RUNNING.

Consumes: the store's URI and the run ids this process opens. Produces: a record per run in progress (pid,
process start time and host, written atomically into the store's running folder,
:func:`pipeline.tracking.store.running_dir`), removed only after the run has ended; :func:`reap_orphans` marks
KILLED the runs whose owner is gone. The process start time comes from Linux's ``/proc/<pid>/stat`` and tells a
reused pid apart; elsewhere a live pid is taken as the owner (never reaped on a guess).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.core.files import write_json
from pipeline.tracking.store import retry, running_dir


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(record: dict[str, Any]) -> bool:
    if record.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: not ours to judge
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = record.get("started")
    return started is None or _process_start(pid) in (None, started)


def record_add(uri: str, run_id: str) -> None:
    """This process owns ``run_id`` (the record is renamed into place: a reader never sees half of it)."""
    pid = os.getpid()
    write_json(
        running_dir(uri) / f"{run_id}.json", {"pid": pid, "started": _process_start(pid), "host": socket.gethostname()}
    )


def record_remove(uri: str, run_id: str) -> None:
    (running_dir(uri) / f"{run_id}.json").unlink(missing_ok=True)


def reap_orphans(uri: str) -> list[str]:
    """Mark KILLED the runs whose owner died without ending them (SIGKILL, power loss); return their ids."""
    reaped = []
    folder = running_dir(uri)
    for entry in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(entry.read_text())
            if _owner_alive(record):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: never reap on a guess
        run_id = entry.stem
        with contextlib.suppress(MlflowException):
            client = mlflow.MlflowClient(uri)
            if retry(client.get_run, run_id).info.status == "RUNNING":
                retry(client.set_terminated, run_id, status="KILLED")
                reaped.append(run_id)
        entry.unlink(missing_ok=True)
    return reaped
