"""What one package version costs every process that imports TensorFlow: ml_dtypes 0.7.0 against 0.6.0.

Consumes: the project's ``.venv`` (this interpreter) and the package index (uv installs each version, without its
dependencies, into a temporary folder put first on ``PYTHONPATH``). Produces: a table on stdout and
``benchmarks/results/import-cost-<time>.json``, which docs/performance.md quotes.

For each of ``--pairs`` rounds, alternating the versions (so that the machine's drift hits both alike), a fresh
process times ``import ml_dtypes`` alone, then another ``pipeline.model.runtime.import_tensorflow()`` (what every
stage runs), wall and CPU seconds. Medians over the rounds, and the median of the rounds' differences.
Run: ``python benchmarks/import_cost.py --pairs 4``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from records import cpu_model, write_record  # noqa: E402

PROBE = """
import json, os, sys, time
start, cpu = time.perf_counter(), os.times()
{statement}
after = os.times()
import ml_dtypes
print(json.dumps({{"wall": time.perf_counter() - start, "cpu": after.user + after.system - cpu.user - cpu.system,
                  "version": ml_dtypes.__version__}}))
"""
STATEMENTS = {
    "ml_dtypes": "import ml_dtypes",
    "tensorflow": "from pipeline.model.runtime import import_tensorflow; import_tensorflow()",
}


def measure(folder: Path, statement: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(statement=statement)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--versions", nargs=2, default=["0.7.0", "0.6.0"], help="before, then after")
    args = parser.parse_args()
    uv = Path(sys.executable).parent / "uv"
    record: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "load_average_before": list(os.getloadavg()),
        "versions": args.versions,
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="import-cost-") as tmp:
        folders = {}
        for version in args.versions:
            folders[version] = Path(tmp) / version
            installer = [str(uv), "pip", "install"] if uv.exists() else [sys.executable, "-m", "pip", "install"]
            subprocess.run([*installer, "--quiet", "--no-deps", "--target", str(folders[version]),
                            f"ml_dtypes=={version}"], check=True)  # fmt: skip
        for _ in range(args.pairs):
            one = {}
            for version in args.versions:
                one[version] = {name: measure(folders[version], s) for name, s in STATEMENTS.items()}
                assert all(m["version"] == version for m in one[version].values()), one[version]
            record["rounds"].append(one)
    before, after = args.versions
    summary: dict = {}
    for name in STATEMENTS:
        for kind in ("wall", "cpu"):
            per = {v: [r[v][name][kind] for r in record["rounds"]] for v in args.versions}
            summary[f"{name}_{kind}_s"] = {v: round(statistics.median(per[v]), 3) for v in args.versions}
            summary[f"{name}_{kind}_saved_s"] = round(
                statistics.median(b - a for b, a in zip(per[before], per[after], strict=True)), 3
            )
    record["summary"] = summary
    record["load_average_after"] = list(os.getloadavg())
    print(json.dumps(summary, indent=2))
    write_record("import-cost", record)


if __name__ == "__main__":
    main()
