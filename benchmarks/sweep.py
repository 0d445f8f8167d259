"""`make sweep` (three optimizers, all data, the default profile) against three runs of the seed's script.

Consumes: a local MNIST mirror ($DATA_MIRROR or --mirror). Produces: a table on stdout and
``benchmarks/results/sweep-<time>.json``: per round each schedule's wall and CPU seconds (user + system of all
its processes), the medians, and each schedule's median wall and CPU ratio against the three seed runs.

The schedules, rotated per round so that the machine's drift falls on all of them alike (A B C D, then
B C D A, ...), in a temporary copy of the repository whose data is prepared once beforehand (as a user's
second command finds it):

- ``seed x3``: ``benchmarks/seed_mnist.py`` three times, one after the other (what the sweep replaces);
- ``basic``: ``python -m pipeline.run -m optimizer=sgd,rmsprop,adam`` (Hydra's basic launcher: the jobs one
  after the other in the sweep's process, each with all cores);
- ``joblib 2x1``: the joblib launcher, 2 jobs at once, each TensorFlow held to 1 thread
  (``TF_NUM_INTRAOP_THREADS=1``, ``TF_NUM_INTEROP_THREADS=1``);
- ``joblib 3x1``: 3 jobs at once, 1 thread each (3 processes on 2 cores: the third job does not wait).

Every job trains, evaluates, logs to MLflow and goes through the registry gate, as ``make sweep`` does; the
sweep's table is printed and logged on its parent run in each schedule.

Run: ``python benchmarks/sweep.py --rounds 2`` (about 12 minutes a round on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, children_cpu, env, prepare_repo, run_seed, timed
from records import cpu_model, write_record

SWEEP = "optimizer=sgd,rmsprop,adam"
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def sweep(cmd: list[str], repo: Path, e: dict[str, str]) -> dict[str, float]:
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"wall_s": time.perf_counter() - start, "cpu_s": children_cpu() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("--only", nargs="*", help="schedules to run (default: all)")
    args = parser.parse_args()
    mirror = str(Path(args.mirror).resolve())
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    repo = prepare_repo([])
    e = {**env(), "DATA_MIRROR": mirror}
    app = [sys.executable, "-m", "pipeline.run", "-m", SWEEP, "train.verbose=silent"]
    schedules = {
        "seed x3": None,
        "basic": (app, e),
        "joblib 2x1": ([*app, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], {**e, **ONE_THREAD}),
        "joblib 3x1": ([*app, "hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], {**e, **ONE_THREAD}),
    }
    if args.only:
        schedules = {k: v for k, v in schedules.items() if k == "seed x3" or k in args.only}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in schedules}
    load: dict[str, list[float]] = {name: [] for name in schedules}
    names = list(schedules)
    try:
        prepare = ["tracking.log_model=false", "train.subset=1", "registry.enabled=false"]
        timed([sys.executable, "-m", "pipeline.run", *prepare], repo, e)  # the data prepared once
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                if schedules[name] is None:
                    runs = [run_seed(mirror) for _ in range(3)]
                    row = {"wall_s": sum(r["wall_s"] for r in runs), "cpu_s": sum(r["cpu_s"] for r in runs)}
                else:
                    cmd, cmd_env = schedules[name]  # type: ignore[misc]
                    row = sweep(cmd, repo, cmd_env)
                rows[name].append(row)
                load[name].append(os.getloadavg()[0])
                print(f"round {i + 1} {name}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU "
                      f"(load {load[name][-1]:.1f})", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    medians = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s")} for n, rs in rows.items()}
    base = medians["seed x3"]
    ratios = {n: {k: m[k] / base[k] for k in m} for n, m in medians.items() if n != "seed x3"}
    for name, m in medians.items():
        note = f" | {ratios[name]['wall_s']:.2f}x wall, {ratios[name]['cpu_s']:.2f}x CPU" if name in ratios else ""
        print(f"median {name}: {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU{note}")
    result = {
        "benchmark": "sweep",
        "started": started,
        "command": " ".join(["python", "benchmarks/sweep.py", f"--rounds={args.rounds}"]),
        "sweep": SWEEP,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "order": "rotated per round",
        "rounds": rows,
        "load_average_1min_after": load,
        "median": medians,
        "median_ratio_vs_seed_x3": ratios,
    }
    write_record("sweep", result)


if __name__ == "__main__":
    main()
