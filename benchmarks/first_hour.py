"""The first hour, measured: each install set's footprint in a fresh clone and a fresh ``.venv``, and the smoke run.

Consumes: this checkout (cloned into a temporary folder, so nothing here changes) and ``$DATA_MIRROR`` for the
smoke run's MNIST. Produces ``benchmarks/results/first-hour-<date>-<time>.json``: for ``make install`` (``.[cpu]``,
what ``make run`` installs) and then ``make install-dev`` (the tests, lint, docs and every extra) the wall
seconds and the ``.venv``'s size in MB, and the wall seconds of ``make smoke`` after the install, with the
installer the Makefile used (``INSTALLER``: uv unless set). The download caches (uv's, pip's) are whatever this
machine has: the times are installs, not downloads, where they are warm.

Run: ``python benchmarks/first_hour.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from records import cpu_model, write_record

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return round(time.perf_counter() - start, 1)


def size_mb(folder: Path) -> float:
    out = subprocess.run(["du", "-sm", str(folder)], capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        record: dict[str, object] = {"cpu": cpu_model()}
        record["installer"] = env.get("INSTALLER", "uv")  # the Makefile's INSTALLER (its default: uv)
        record["install_cpu_s"] = timed(["make", "install"], clone, env)
        record["install_cpu_mb"] = size_mb(clone / ".venv")
        record["install_dev_s"] = timed(["make", "install-dev"], clone, env)
        record["install_dev_mb"] = size_mb(clone / ".venv")
        record["smoke_s"] = timed(["make", "smoke"], clone, env)
    print(json.dumps(record, indent=2))
    write_record("first-hour", record)


if __name__ == "__main__":
    main()
