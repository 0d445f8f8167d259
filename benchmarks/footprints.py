"""The install sets' footprints beyond the pipeline's own: the GPU install and the team server's.

Consumes: this checkout (cloned into a temporary folder, so nothing here changes). Produces
``benchmarks/results/footprints-<date>-<time>.json``: the wall seconds and the ``.venv``'s MB of
``make install EXTRAS=gpu`` (``.[gpu]``: TensorFlow with its CUDA wheels, instead of ``.[cpu]``) in a fresh
``.venv``, and of ``make install`` followed by the team server's extra (``.[server]``, what ``make server``
adds: seconds more, then MB in all). pip's download cache is this machine's: a wheel not in it is downloaded,
and its time counted.

Run: ``python benchmarks/footprints.py`` (``benchmarks/first_hour.py`` measures ``.[cpu]`` and ``.[dev]``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from first_hour import ROOT, size_mb, timed  # the same timing and size, measured the same way
from records import cpu_model, write_record


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    record: dict[str, object] = {
        "cpu": cpu_model(),
        "measured": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        record["install_gpu_s"] = timed(["make", "install", "EXTRAS=gpu"], clone, env)
        record["install_gpu_mb"] = size_mb(clone / ".venv")
        shutil.rmtree(clone / ".venv")
        record["install_cpu_s"] = timed(["make", "install"], clone, env)
        record["install_server_s"] = timed(["make", ".venv/.installed-server"], clone, env)
        record["install_server_mb"] = size_mb(clone / ".venv")
    record["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # other work on the machine slows installs
    print(json.dumps(record, indent=2))
    write_record("footprints", record)


if __name__ == "__main__":
    main()
