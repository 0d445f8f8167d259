"""Paired benchmark: a pipeline run's tracking overhead against SQLite (A) and against the team's server (B).

Consumes: a local MNIST mirror ($DATA_MIRROR or --mirror), PostgreSQL's programs (``make server`` finds them).
Produces: a table on stdout and a JSON record in ``benchmarks/results/``: for each run of
``dvc repro -f train evaluate`` (``train.subset`` images, default 2000), its wall time and the seconds of each
tracking phase the train and evaluate stages log (``timings <stage>: {...}``, :mod:`pipeline.core.timing`):
importing MLflow, opening the run, logging params/metrics/model/artifacts, the registry gate, closing the
run. The server is ``pipeline.server.manage.start`` (what ``make server`` runs: PostgreSQL, ``mlflow server`` with
proxied artifacts to a local folder), on 127.0.0.1, so the numbers are the software's cost, not a network's.

Runs alternate A B A B so that the machine's load drifts over both sides alike; quote medians and ratios.

Run: ``python benchmarks/tracking_overhead.py --pairs 3`` (about 1 minute a pair on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, env, prepare_repo

sys.path.insert(0, str(ROOT))
from pipeline.core.timing import read_reports
from pipeline.server.manage import free_port, start, stop

#: The phases of the train and evaluate stages that talk to MLflow (everything else is the same work).
TRACKING = ("import mlflow", "open run", "log to mlflow", "registry", "close run")


def run(repo: Path, mirror: str, uri: str) -> dict:
    e = {**env(), "DATA_MIRROR": mirror, "MLFLOW_TRACKING_URI": uri}
    started = time.perf_counter()
    out = subprocess.run(["dvc", "repro", "-f", "train", "evaluate"], cwd=repo, capture_output=True, text=True, env=e)
    wall = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"dvc repro failed against {uri}:\n{out.stderr[-3000:]}")
    phases = {
        f"{stage}: {phase}": seconds
        for stage, report in read_reports(out.stdout + out.stderr).items()
        if stage in ("train", "evaluate")
        for phase, seconds in report.items()
        if phase in TRACKING
    }
    return {"wall_s": wall, "tracking_s": sum(phases.values()), "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--mirror", default=None, help="MNIST mirror folder (default: $DATA_MIRROR)")
    args = parser.parse_args()
    import os

    mirror = args.mirror or os.environ.get("DATA_MIRROR") or sys.exit("set DATA_MIRROR or --mirror")
    repo = prepare_repo([f"train.subset={args.subset}", "train.verbose=silent"])
    state = Path(tempfile.mkdtemp(prefix="bench-server-", dir="/tmp"))
    state.chmod(0o755)  # PostgreSQL runs as user postgres under root: its folder must be reachable
    sqlite = f"sqlite:///{repo / 'bench.db'}"
    server = start(state, port=free_port(), workers=2)
    rows = []
    try:
        subprocess.run(["dvc", "repro"], cwd=repo, env={**env(), "DATA_MIRROR": mirror, "MLFLOW_TRACKING_URI": sqlite},
                       check=True, capture_output=True)  # fmt: skip
        for i in range(args.pairs):
            pair = {"A": run(repo, mirror, sqlite), "B": run(repo, mirror, server.uri)}
            rows.append(pair)
            print(f"pair {i + 1}: SQLite tracking {pair['A']['tracking_s']:.2f} s (wall {pair['A']['wall_s']:.1f}), "
                  f"server {pair['B']['tracking_s']:.2f} s (wall {pair['B']['wall_s']:.1f})", flush=True)  # fmt: skip
    finally:
        stop(state)
    med = {side: statistics.median(r[side]["tracking_s"] for r in rows) for side in "AB"}
    wall = {side: statistics.median(r[side]["wall_s"] for r in rows) for side in "AB"}
    phases = sorted({p for r in rows for side in "AB" for p in r[side]["phases"]})
    print("\n| phase | SQLite (s) | server on PostgreSQL (s) |\n|---|---|---|")
    for p in phases:
        a, b = (statistics.median(r[s]["phases"].get(p, 0.0) for r in rows) for s in "AB")
        print(f"| {p} | {a:.2f} | {b:.2f} |")
    print(f"| **all tracking** | **{med['A']:.2f}** | **{med['B']:.2f}** |")
    print(f"| whole `dvc repro -f train evaluate` | {wall['A']:.1f} | {wall['B']:.1f} |")
    print(f"\nserver minus SQLite: {med['B'] - med['A']:+.2f} s of tracking per run (medians of {len(rows)} pairs)")
    out = ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S-tracking.json")
    out.write_text(json.dumps({"subset": args.subset, "pairs": rows, "median_tracking_s": med, "median_wall_s": wall},
                              indent=1))  # fmt: skip
    print(f"record: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
