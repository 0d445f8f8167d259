"""Paired benchmark: the seed's script (A) against this project's whole ``dvc repro -f`` (B).

Consumes: a local MNIST mirror ($DATA_MIRROR or --mirror) and optional Hydra overrides for B (to compare
profiles the same way, e.g. ``train=fast``). Produces: a table on stdout and a JSON record in
``benchmarks/results/``: each run's wall time, CPU time (user + system of all its processes) and test
accuracy, per-pair ratios B/A and their medians, B's train-stage throughput in GFLOP/s, a matmul peak (fp32,
bf16) measured in the same run, and the median seconds of each phase: the seed's (import, data, build, fit,
evaluate) and each stage's (from the ``timings`` line every stage logs, :mod:`pipeline.core.timing`), plus DVC's
own share and a no-op ``dvc repro``.

Runs alternate A B, B A, A B, ... (``--order abba``; ``ab`` always runs the seed first, as the series before
2026-11-30 15:10 did) so that the machine's load drifts over both sides alike and neither side always runs
right after the other; only the medians and ratios of such pairs are worth quoting on a shared machine. This host switches between two speeds (the same
fit runs 1.4x longer in the slow one, at the same CPU time: one core is partly taken away), so wall ratios
swing by that much from pair to pair; CPU-time ratios do not.

Run: ``python benchmarks/compare.py --pairs 3 [overrides...]`` (about 2 minutes a pair on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from records import cpu_model  # noqa: E402

from pipeline.core.timing import read_reports  # noqa: E402

SEED_SCRIPT = ROOT / "benchmarks" / "seed_mnist.py"

MATMUL = """
import time, tensorflow as tf
n = 2048
for dtype in (tf.float32, tf.bfloat16):
    a = tf.random.normal((n, n), dtype=tf.float32); a = tf.cast(a, dtype); b = tf.identity(a)
    tf.linalg.matmul(a, b).numpy()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter(); r = [tf.linalg.matmul(a, b) for _ in range(4)]; r[-1].numpy()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    print(dtype.name, round(best, 1))
"""


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def timed(cmd: list[str], repo: Path, e: dict[str, str]) -> float:
    """Wall seconds of ``cmd`` run in ``repo``; a failure ends the benchmark with the command's last output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - start


def matmul_peak() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MATMUL], capture_output=True, text=True, env=env(), check=True)
    return {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}


def train_flops_per_sample() -> float:
    """Multiply-adds of one forward pass, x2 for FLOPs, x3 for forward + backward."""
    from pipeline.config import compose, validate
    from pipeline.model.architectures import build_model

    model = build_model(validate(compose()).model)
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            macs += h * w * c_out * layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2]
        elif kind == "Dense":
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return 2 * 3 * macs


def prepare_repo(overrides: list[str]) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "pipeline.config", *overrides], cwd=dest, env=env(), check=True)
    return dest


def children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child process so far, their children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seed(mirror: str) -> dict:
    start, cpu = time.perf_counter(), children_cpu()
    out = subprocess.run([sys.executable, str(SEED_SCRIPT), mirror], capture_output=True, text=True, env=env())
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if out.returncode:
        raise SystemExit(f"seed script failed:\n{out.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(out.stdout.strip().splitlines()[-1])}


def run_pipeline(repo: Path, mirror: str, flops_per_sample: float) -> dict:
    e = env()
    e["DATA_MIRROR"] = mirror
    start, cpu = time.perf_counter(), children_cpu()
    out = subprocess.run(["dvc", "repro", "-f"], cwd=repo, capture_output=True, text=True, env=e)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if out.returncode:
        raise SystemExit(f"dvc repro failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    stages = read_reports(out.stdout + out.stderr)  # each stage's `timings <stage>: {...}` line
    stages["dvc"] = {"total": wall - sum(t["total"] for t in stages.values())}  # DVC's own work: hashing, caching
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    import mlflow

    run_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id).data
    assert logged.metrics["test_accuracy"] == metrics["test_accuracy"], "MLflow and metrics.json disagree"
    epochs = int(logged.params["train.epochs"])
    fit_s = logged.metrics["train_time_s"]
    per_epoch = logged.metrics["train_samples"]
    if logged.params.get("train.steps_per_epoch", "None") != "None":  # a fraction of an epoch: the samples it saw
        per_epoch = min(per_epoch, int(logged.params["train.steps_per_epoch"]) * int(logged.params["train.batch_size"]))
    gflops = flops_per_sample * per_epoch * epochs / fit_s / 1e9
    return {"wall_s": wall, "cpu_s": cpu, "fit_s": fit_s, "train_gflops": gflops, "stages": stages, **metrics}


def time_noop(repo: Path, mirror: str, repeats: int = 3) -> float:
    """A no-op ``dvc repro`` (everything up to date): median seconds. Each stage's own phases come from its
    timing line in every pair (:func:`run_pipeline`)."""
    e = env()
    e["DATA_MIRROR"] = mirror
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=repo, env=e, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def breakdown(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Median seconds per phase over the pairs: the seed's phases, and each pipeline stage's."""
    seed: dict[str, list[float]] = {}
    for r in rows:
        seed_phases = dict(r["A"].get("timings", {}))
        seed_phases["start and exit"] = r["A"]["wall_s"] - sum(seed_phases.values())
        for k, v in seed_phases.items():
            seed.setdefault(k, []).append(v)
    result = {"seed": {k: round(statistics.median(v), 2) for k, v in seed.items()}}
    for stage in rows[0]["B"]["stages"]:
        phases: dict[str, list[float]] = {}
        for r in rows:
            for k, v in r["B"]["stages"].get(stage, {}).items():
                phases.setdefault(k, []).append(v)
        result[stage] = {k: round(statistics.median(v), 2) for k, v in phases.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--order",
        choices=("abba", "ab"),
        default="abba",
        help="abba: every other pair runs the pipeline first (the default since 2026-11-30 15:10); ab: the seed first",
    )
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the pipeline side, e.g. train=fast")
    args = parser.parse_args()
    mirror = str(Path(args.mirror).resolve())

    flops = train_flops_per_sample()
    print(f"model: {flops * 60000 / 1e12:.2f} TFLOP per epoch of 60,000 (forward + backward)")
    peak_before = matmul_peak()
    print(f"matmul peak (2048^3, both cores): {peak_before} GFLOP/s")
    repo = prepare_repo(args.overrides)
    rows = []
    loads = [round(os.getloadavg()[0], 2)]  # other processes' share of this shared host, before and after each pair
    try:
        for i in range(args.pairs):
            result = {}
            sides = ("B", "A") if args.order == "abba" and i % 2 else ("A", "B")
            for side in sides:
                result[side] = run_seed(mirror) if side == "A" else run_pipeline(repo, mirror, flops)
            row = {
                "pair": i + 1,
                "first": sides[0],
                "A": result["A"],
                "B": result["B"],
                "ratio": result["B"]["wall_s"] / result["A"]["wall_s"],
                "cpu_ratio": result["B"]["cpu_s"] / result["A"]["cpu_s"],
            }
            rows.append(row)
            loads.append(round(os.getloadavg()[0], 2))
            print(
                f"pair {i + 1} ({''.join(sides)}): seed {result['A']['wall_s']:6.1f} s (fit {result['A']['timings']['fit']:.1f} s)"
                f" acc {result['A']['test_accuracy']:.4f}"
                f" | pipeline {result['B']['wall_s']:6.1f} s acc {result['B']['test_accuracy']:.4f}"
                f" (fit {result['B']['fit_s']:.1f} s, {result['B']['train_gflops']:.0f} GFLOP/s)"
                f" | ratio {row['ratio']:.3f} (CPU {result['A']['cpu_s']:.0f} s vs {result['B']['cpu_s']:.0f} s:"
                f" {row['cpu_ratio']:.3f})",
                flush=True,
            )
        noop = time_noop(repo, mirror)
        print(f"no-op dvc repro: {noop} s")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    peak_after = matmul_peak()
    from omegaconf import OmegaConf

    from pipeline.config import compose

    summary = {
        "overrides": args.overrides,
        "train_config": OmegaConf.to_container(compose(args.overrides).train),  # the recipe measured (test_readme.py)
        "load_average_1min": loads,
        "pairs": args.pairs,
        "order": args.order,
        "seed_wall_s_median": statistics.median(r["A"]["wall_s"] for r in rows),
        "pipeline_wall_s_median": statistics.median(r["B"]["wall_s"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rows),
        "seed_fit_s_median": statistics.median(r["A"]["timings"]["fit"] for r in rows),
        "seed_accuracy_median": statistics.median(r["A"]["test_accuracy"] for r in rows),
        "pipeline_accuracy_median": statistics.median(r["B"]["test_accuracy"] for r in rows),
        "pipeline_fit_s_median": statistics.median(r["B"]["fit_s"] for r in rows),
        "train_gflops_median": statistics.median(r["B"]["train_gflops"] for r in rows),
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after},
        "noop_repro_s": noop,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    summary["breakdown_median_s"] = breakdown(rows)
    print(json.dumps(summary, indent=2))
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / f"{time.strftime('%Y%m%d-%H%M%S')}-{'_'.join(args.overrides) or 'default'}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "pairs": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
