"""The fast profile's accuracy per seed: ``train=fast`` trained with each seed, scored on all 10,000 test images.

Consumes: a local MNIST mirror ($DATA_MIRROR or --mirror) and optional Hydra overrides (default: ``train=fast``).
Produces: a table on stdout and ``benchmarks/results/fast-accuracy-<time>.json``: per seed the test accuracy,
the fit's wall and CPU seconds, the precision and the load average, and the minimum accuracy over the seeds.

Each seed runs in a fresh process, through the code the stages run: the train stage's fit
(:func:`pipeline.model.fit.fit`, which saves the model) and the evaluate stage's scoring of the saved model
(:func:`pipeline.model.score.load_model` and :func:`~pipeline.model.score.score` on the test split), without
MLflow. The data is downloaded and prepared once, into a temporary folder. Nothing of the test split reaches the
fit: it stops after the configured steps.

Run: ``python benchmarks/fast_accuracy.py --seeds 42 1 2 [overrides...]`` (about a minute a seed on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from records import cpu_model, write_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, os, resource, sys
sys.path.insert(0, {root!r})
from pipeline.config import compose, validate
from pipeline.data.download import download
from pipeline.data.preprocess import preprocess
w = {work!r}
paths = [f"paths.raw_dir={{w}}/raw", f"paths.processed_dir={{w}}/processed", f"paths.model={{w}}/model.keras",
         f"paths.history={{w}}/history.csv", f"paths.steps={{w}}/steps.csv", f"paths.backup_dir={{w}}/backup"]
cfg = validate(compose([*{overrides!r}, "train.verbose=silent", "seed={seed}", *paths]))
if not os.path.exists(f"{{w}}/processed/test.npz"):
    download(cfg.dataset, cfg.paths.raw_dir, {{"DATA_MIRROR": {mirror!r}}})
    preprocess(cfg.dataset, cfg.paths.raw_dir, cfg.paths.processed_dir)
from pipeline.data.formats import load_split
from pipeline.model.fit import fit
from pipeline.model.score import load_model, score
before = resource.getrusage(resource.RUSAGE_SELF)
result = fit(cfg)
after = resource.getrusage(resource.RUSAGE_SELF)
x, y = load_split(cfg.paths.processed_dir, "test", cfg.dataset.num_classes)
metrics = score(load_model(cfg.paths.model), x, y, cfg.dataset.num_classes).metrics
print(json.dumps({{
    "test_accuracy": metrics["test_accuracy"], "test_samples": metrics["test_samples"],
    "train_samples_seen": cfg.train.epochs * min(result.samples, cfg.train.batch_size * (cfg.train.steps_per_epoch or result.samples)),
    "fit_s": round(result.train_seconds, 2),
    "fit_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
    "precision": result.precision,
}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("overrides", nargs="*", default=["train=fast"])
    args = parser.parse_args()
    overrides = args.overrides or ["train=fast"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fast-accuracy-") as work:
        for seed in args.seeds:
            code = CHILD.format(
                root=str(ROOT), work=work, overrides=overrides, seed=seed, mirror=str(Path(args.mirror).resolve())
            )
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
            row = {"seed": seed, **json.loads(proc.stdout.strip().splitlines()[-1])}
            row["load_average_1min"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(
                f"seed {seed}: test accuracy {row['test_accuracy']:.4f} on {row['test_samples']} images, fit "
                f"{row['fit_s']:.1f} s ({row['fit_cpu_s']:.1f} s CPU, {row['precision']}), load {row['load_average_1min']}",
                flush=True,
            )
    from omegaconf import OmegaConf

    from pipeline.config import compose

    accuracies = [r["test_accuracy"] for r in rows]
    summary = {
        "overrides": overrides,
        "train_config": OmegaConf.to_container(compose(overrides).train),  # the recipe measured (test_readme.py)
        "seeds": args.seeds,
        "accuracies": accuracies,
        "min_accuracy": min(accuracies),
        "median_accuracy": statistics.median(accuracies),
        "median_fit_s": statistics.median(r["fit_s"] for r in rows),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    write_record("fast-accuracy", {"summary": summary, "seeds": rows})


if __name__ == "__main__":
    main()
