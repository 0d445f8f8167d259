"""Paired benchmark: what the train and evaluate stages cost beyond a bare ``import tensorflow``.

Consumes: a local MNIST mirror ($DATA_MIRROR or --mirror). Produces: a table on stdout and a JSON record in
``benchmarks/results/``. In a temporary copy of the repository (``train.subset``, default 2,000 images, so
training is short; the evaluate stage scores all 10,000 test images whatever the model) it runs
``dvc repro`` once, then alternates, round by round: (A) a fresh ``python -c "import tensorflow"``, (B) the
``evaluate`` stage process, (C) the ``train`` stage process. For each it records the wall time; for the
stages also their ``timings`` line (:mod:`pipeline.core.timing`). It reports per round, and as medians,
evaluate - A (the issue's target: <= 1.5 s) and train's wall time outside ``fit`` - A (target: <= 2 s).

Each round's three processes run back to back, so a shift of the host's speed hits them alike; quote the
per-round differences and their median.

Run: ``python benchmarks/stage_startup.py --rounds 4`` (about 25 s a round on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, env, prepare_repo

from pipeline.core.timing import read_reports


def timed(cmd: list[str], repo: Path, e: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``cmd`` and the phases of the ``timings`` line it logged (empty if none)."""
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    reports = read_reports(out.stdout + out.stderr)
    return wall, next(iter(reports.values()), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    args = parser.parse_args()
    e = {**env(), "DATA_MIRROR": str(Path(args.mirror).resolve())}
    repo = prepare_repo([f"train.subset={args.subset}", "train.verbose=silent"])
    rows: list[dict[str, Any]] = []
    try:
        subprocess.run(["dvc", "repro"], cwd=repo, env=e, check=True, capture_output=True)
        for i in range(args.rounds):
            bare, _ = timed([sys.executable, "-c", "import tensorflow"], repo, e)
            evaluate, eval_phases = timed([sys.executable, "-m", "pipeline.stages.evaluate"], repo, e)
            train, train_phases = timed([sys.executable, "-m", "pipeline.stages.train"], repo, e)
            row = {
                "bare_import_s": bare,
                "evaluate_s": evaluate,
                "train_s": train,
                "train_fit_s": train_phases["fit"],
                "evaluate_over_import_s": evaluate - bare,
                "train_outside_fit_over_import_s": train - train_phases["fit"] - bare,
                "evaluate_timings": eval_phases,
                "train_timings": train_phases,
            }
            rows.append(row)
            print(
                f"round {i + 1}: import tensorflow {bare:.2f} s | evaluate {evaluate:.2f} s "
                f"(+{row['evaluate_over_import_s']:.2f}) | train {train:.2f} s, fit {row['train_fit_s']:.2f} s "
                f"(outside fit +{row['train_outside_fit_over_import_s']:.2f})",
                flush=True,
            )
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    summary = {
        key: round(statistics.median(r[key] for r in rows), 2)
        for key in ("bare_import_s", "evaluate_s", "evaluate_over_import_s", "train_outside_fit_over_import_s")
    }
    print("medians:", json.dumps(summary))
    out = ROOT / "benchmarks" / "results" / f"stage-startup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"summary": summary, "rounds": rows}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
