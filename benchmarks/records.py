"""The benchmarks' results files: the CPU they ran on and one JSON record per run under ``benchmarks/results/``.

Consumes: a record (a JSON-serialisable dict) and a name. Produces: ``benchmarks/results/<name>-<local
time>.json`` and a ``wrote <path>`` line. Imports nothing of the pipeline, so the install benchmarks
(``first_hour.py``, ``footprints.py``, ``first_run.py``) can use it before the project is installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" where it names none)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")


def write_record(name: str, record: dict[str, Any]) -> Path:
    """``record`` as ``benchmarks/results/<name>-<YYYYmmdd-HHMMSS>.json``; prints and returns the path."""
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return out
