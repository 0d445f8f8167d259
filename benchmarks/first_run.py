"""The first run, against the peer's: from a fresh clone and a fresh ``.venv`` to a first tracked model.

Consumes: this checkout (cloned into a temporary folder per round, so nothing here changes) and ``$DATA_MIRROR``
(the four MNIST .gz files, for both sides). Produces ``benchmarks/results/first-run-<date>-<time>.json``: per
round, alternating A B / B A, the wall and CPU seconds of

- **A, the pipeline**: ``make run`` in a fresh clone of HEAD (commit first what you measure), timed in its two
  parts: ``make install`` (``.[cpu]``, by the Makefile's ``INSTALLER``: uv, or ``--installer pip``) and
  ``dvc repro`` (download, preprocess, train, evaluate, the gate, every run in MLflow);
- **B, the peer**: a fresh ``.venv`` in the same kind of folder, ``pip install tensorflow-cpu`` (the version
  this project's install picks, so both sides train on the same kernels) and the seed script
  (``benchmarks/seed_mnist.py``: one epoch, batch 32, all 60,000 images, no tracking);

and the medians with their ratio A / B. The download caches (pip's, uv's) are this machine's for both sides
(warm after the first round): the figure is install and training, not download speed.

Run: ``python benchmarks/first_run.py [--rounds 4] [--installer uv|pip]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from records import cpu_model, write_record

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU of the children) seconds of one command; exits with its output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(wall, 1), round(cpu, 1)


def pipeline(tmp: Path, env: dict[str, str], installer: str) -> dict[str, float]:
    """``make run``, timed as its two parts: ``make install`` (what ``make run`` does first), then ``make run``."""
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    steps = [["make", "install", f"INSTALLER={installer}"], ["make", "run", f"INSTALLER={installer}"]]
    (install_wall, run_wall), (install_cpu, run_cpu) = zip(*(timed(cmd, clone, env) for cmd in steps), strict=True)
    return {
        "wall_s": round(install_wall + run_wall, 1),
        "cpu_s": round(install_cpu + run_cpu, 1),
        "install_wall_s": install_wall,
        "repro_wall_s": run_wall,
    }


def peer(tmp: Path, env: dict[str, str], tensorflow: str) -> dict[str, float]:
    folder = tmp / "peer"
    folder.mkdir()
    python = folder / ".venv" / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(folder / ".venv")],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", f"tensorflow-cpu=={tensorflow}"],
        [str(python), str(ROOT / "benchmarks" / "seed_mnist.py"), env["DATA_MIRROR"]],
    ]
    walls, cpus = zip(*(timed(cmd, folder, env) for cmd in steps), strict=True)
    return {"wall_s": round(sum(walls), 1), "cpu_s": round(sum(cpus), 1), "seed_script_wall_s": walls[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--installer", choices=("uv", "pip"), default="uv", help="the Makefile's INSTALLER (its default: uv)"
    )
    args = parser.parse_args()
    if not os.environ.get("DATA_MIRROR"):
        sys.exit("set DATA_MIRROR to a folder holding the four MNIST .gz files")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    tensorflow = metadata.version("tensorflow-cpu")
    rounds: list[dict[str, object]] = []
    for i in range(args.rounds):
        order = ("pipeline", "peer") if i % 2 == 0 else ("peer", "pipeline")
        result: dict[str, object] = {"order": "".join("AB"[order.index(s)] for s in ("pipeline", "peer"))}
        for side in order:
            with tempfile.TemporaryDirectory() as tmp:
                result[side] = (
                    pipeline(Path(tmp), env, args.installer) if side == "pipeline" else peer(Path(tmp), env, tensorflow)
                )
        result["load_average_1min"] = os.getloadavg()[0]
        rounds.append(result)
        print(json.dumps(result), flush=True)

    def median(side: str, key: str) -> float:
        return round(statistics.median(float(r[side][key]) for r in rounds), 2)  # type: ignore[index]

    record = {
        "benchmark": "first-run",
        "command": f"python benchmarks/first_run.py --rounds {args.rounds} --installer {args.installer}",
        "installer": args.installer,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "tensorflow_cpu": tensorflow,
        "rounds": rounds,
        "summary": {
            "pipeline_wall_s_median": median("pipeline", "wall_s"),
            "pipeline_install_wall_s_median": median("pipeline", "install_wall_s"),
            "pipeline_repro_wall_s_median": median("pipeline", "repro_wall_s"),
            "peer_wall_s_median": median("peer", "wall_s"),
            "ratio_wall_median": round(median("pipeline", "wall_s") / median("peer", "wall_s"), 3),
            "ratio_cpu_median": round(median("pipeline", "cpu_s") / median("peer", "cpu_s"), 3),
        },
    }
    print(json.dumps(record["summary"], indent=2))
    write_record("first-run", record)


if __name__ == "__main__":
    main()
