"""Paired A/B of the per-step levers of the seed's fit (Adam, batch 32, float32) on this machine.

Consumes: the processed training split (``--data``, default ``data/processed/train.npz``: uint8 pixels).
Produces: a table on stdout and a JSON record in ``benchmarks/results/fit-levers-<time>.json``: for each
variant, the seconds of every round's ``fit`` on the same samples (its first step's tracing included),
their median and the median of the per-round ratios to the first variant, in wall and in CPU time (the
seed's ``fit`` alone; the product's ``pipeline.model.fit.fit``, whose loading and model building add about 1 s).

Each variant runs in a fresh process (threads and TensorFlow options are process-wide), and the variants
alternate round by round (A B C ... A B C ...), so that the host's drifting load falls on all of them alike.

Run: ``python benchmarks/fit_levers.py --rounds 4 --steps 500 [--variants seed,train,spe25,...]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each variant: "seed" (the seed script's own fit: float64 arrays, no callbacks) or Hydra overrides of the
# product's train stage, run as `python -m pipeline.stages.train` runs it (an MLflow run, its observers).
VARIANTS: dict[str, list[str] | None] = {
    "seed": None,
    "train": [],  # the default profile as configured
    "stock": ["train.fast_kernels=false"],  # TensorFlow's stock kernels for Adam and the Dense gradients
    "fast_stock": ["train=fast", "train.fast_kernels=false"],
    "spe1": ["train.steps_per_execution=1"],
    "spe25": ["train.steps_per_execution=25"],
    "spe100": ["train.steps_per_execution=100"],
    "fast": ["train=fast"],
    "fast_nodet": ["train=fast", "train.deterministic=false"],
    "fast256": ["train=fast", "train.batch_size=256", "train.lr_scale=4"],
    "fast256_nodet": ["train=fast", "train.batch_size=256", "train.lr_scale=4", "train.deterministic=false"],
}

CHILD = r"""
import json, os, sys, tempfile, time
import numpy as np
overrides = json.loads(sys.argv[1]); samples = int(sys.argv[2]); data = sys.argv[3]
sys.path.insert(0, os.getcwd())
if overrides is None:  # the seed script's fit, as it wrote it
    import tensorflow as tf
    from pipeline.config import compose, validate
    from pipeline.model.architectures import build_model
    with np.load(data) as npz:
        x, y = npz["x"][:samples] / 255.0, npz["y"][:samples]
    model = build_model(validate(compose()).model)
    model.compile(optimizer=tf.keras.optimizers.Adam(), loss=tf.keras.losses.sparse_categorical_crossentropy,
                  metrics=["accuracy"])
    t, c = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=32, shuffle=True, epochs=1, verbose=2)
    fit_s, cpu_s = time.perf_counter() - t, time.process_time() - c
else:
    from pipeline import tracking
    from pipeline.config import compose, validate
    from pipeline.model.fit import fit
    tmp = tempfile.mkdtemp()
    cfg = validate(compose([*overrides, f"train.subset={samples}", f"paths.processed_dir={os.path.dirname(data)}",
                            f"paths.model={tmp}/m.keras", f"paths.history={tmp}/h.csv", f"paths.steps={tmp}/s.csv",
                            f"paths.backup_dir={tmp}/backup", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]))
    with tracking.start_run(cfg):
        c = time.process_time()  # the fit function: loading and building (about 1 s) and the fit
        fit_s = fit(cfg, observers=[tracking.MetricsLogger()]).train_seconds
        cpu_s = time.process_time() - c
print(json.dumps({"fit_s": fit_s, "cpu_s": cpu_s}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (batch 32), all timed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data", default=str(ROOT / "data" / "processed" / "train.npz"))
    args = parser.parse_args()
    names = args.variants.split(",")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    times: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(VARIANTS[name]), str(32 * args.steps), args.data],
                cwd=ROOT, capture_output=True, text=True, env=env,
            )  # fmt: skip
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(result["fit_s"])
            cpus[name].append(result["cpu_s"])
            print(f"round {r + 1} {name:14s} fit {times[name][-1]:6.2f} s, CPU {cpus[name][-1]:6.2f} s", flush=True)
    base = names[0]
    summary = {}
    for name in names:
        ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpus[name], cpus[base], strict=True)]
        summary[name] = {
            "overrides": VARIANTS[name],
            "fit_s": [round(t, 2) for t in times[name]],
            "cpu_s": [round(t, 2) for t in cpus[name]],
            "median_fit_s": round(statistics.median(times[name]), 2),
            f"median_ratio_to_{base}": round(statistics.median(ratios), 3),
            f"median_cpu_ratio_to_{base}": round(statistics.median(cpu_ratios), 3),
        }
        print(
            f"{name:14s} median fit {summary[name]['median_fit_s']:6.2f} s, ratio {statistics.median(ratios):.3f}, "
            f"CPU ratio {statistics.median(cpu_ratios):.3f}"
        )
    record = ROOT / "benchmarks" / "results" / f"fit-levers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record.write_text(
        json.dumps({"samples": 32 * args.steps, "rounds": args.rounds, "variants": summary}, indent=2) + "\n"
    )
    print(f"wrote {record.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
