"""Cost of a sweep job through Hydra's Ray launcher against the basic launcher, on this machine.

Runs the same 2-job sweep (``-m optimizer=sgd,adam <overrides>``) in a temporary copy of the repository (data
prepared once beforehand), rotating A B C A B C...:

- (A) ``basic``: Hydra's basic launcher, both jobs one after the other in the sweep's process;
- (B) ``ray-local``: ``hydra/launcher=ray`` with a 1-CPU Ray instance the sweep starts and stops itself
  (``+hydra.launcher.ray.init.num_cpus=1``: jobs one at a time, as with A);
- (C) ``ray-cluster``: ``hydra/launcher=ray_cluster`` on a 1-CPU Ray cluster started once beforehand
  (``ray start --head --block``, stopped by its pid at the end), which is how a team would use one.

Jobs run one at a time in all three, so the difference is what Ray adds: its start (B), connecting to it,
shipping the job, and a fresh worker process per sweep that imports TensorFlow and MLflow again. Prints each
sweep's wall time, the medians, and the median extra seconds per job against A; writes
``benchmarks/results/launchers-<time>.json``.

Run: ``python benchmarks/launchers.py --rounds 3 train.subset=2000``
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, env, prepare_repo, timed
from records import write_record

sys.path.insert(0, str(ROOT))
from pipeline.server.manage import free_port
from tests.integration.test_ray import start_node, stop_node

JOBS = "optimizer=sgd,adam"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("overrides", nargs="*", default=["train.subset=2000"])
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    repo = prepare_repo([])
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's Unix sockets live under it
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    e = {**env(), "DATA_MIRROR": str(Path(args.mirror).resolve())}
    e.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(temp))
    app = [sys.executable, "-m", "pipeline.run", "-m", JOBS, "train.verbose=silent", "registry.enabled=false"]
    app += args.overrides
    port = free_port()
    head = None
    try:
        timed([*app[:3], "tracking.log_model=false", "train.subset=1"], repo, e)  # data prepared once
        head = start_node(
            ["--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}", "--disable-usage-stats"],
            repo, e, temp / "head.log",
        )  # fmt: skip
        variants = {
            "basic": app,
            "ray-local": [*app, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=1"],
            "ray-cluster": [*app, "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        load: dict[str, list[float]] = {name: [] for name in variants}  # 1-minute load average after each sweep
        for i in range(args.rounds):
            for name, cmd in variants.items():
                times[name].append(timed(cmd, repo, e))
                load[name].append(os.getloadavg()[0])
                print(f"round {i + 1} {name}: {times[name][-1]:.1f} s (load {load[name][-1]:.1f})", flush=True)
    finally:
        if head is not None:
            stop_node(head)
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    jobs = len(JOBS.split("=")[1].split(","))
    extra = {name: (medians[name] - medians["basic"]) / jobs for name in variants if name != "basic"}
    for name in variants:
        note = f", {extra[name]:+.1f} s per job vs basic" if name in extra else ""
        print(f"median {name}: {medians[name]:.1f} s for {jobs} jobs{note}")
    result = {
        "benchmark": "launchers",
        "started": started,
        "command": " ".join(["python", "benchmarks/launchers.py", f"--rounds={args.rounds}", *args.overrides]),
        "sweep": JOBS,
        "overrides": args.overrides,
        "cpu_count": os.cpu_count(),
        "order": "A B C per round",
        "seconds": times,
        "load_average_1min_after": load,
        "median_seconds": medians,
        "extra_seconds_per_job_vs_basic": extra,
    }
    write_record("launchers", result)


if __name__ == "__main__":
    main()
