"""Cost of a Hydra multirun against a single run: 3 jobs should cost at most 3.1x one job.

Runs, alternating A B A B in a temporary copy of the repository (data prepared once beforehand, as a
user's second command would find it): (A) ``python -m pipeline.run <overrides>`` and (B)
``python -m pipeline.run -m optimizer=sgd,rmsprop,adam <overrides>``; prints each wall time, the
per-pair ratios B/A and their median.

Run: ``python benchmarks/multirun.py --pairs 2 train.subset=3000``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, env, prepare_repo, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("overrides", nargs="*", default=["train.subset=3000"])
    args = parser.parse_args()
    e = {**env(), "DATA_MIRROR": str(Path(args.mirror).resolve())}
    repo = prepare_repo([])
    app = [sys.executable, "-m", "pipeline.run", "train.verbose=silent", *args.overrides]
    try:
        timed([*app, "tracking.log_model=false", "train.subset=1"], repo, e)  # data prepared once
        ratios = []
        for i in range(args.pairs):
            one = timed(app, repo, e)
            three = timed([app[0], *app[1:3], "-m", "optimizer=sgd,rmsprop,adam", *app[3:]], repo, e)
            ratios.append(three / one)
            print(f"pair {i + 1}: one job {one:.1f} s | three jobs {three:.1f} s | ratio {three / one:.2f}", flush=True)
        print(f"median ratio: {statistics.median(ratios):.2f} (target <= 3.1)")
    finally:
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
