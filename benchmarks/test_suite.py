"""The quick suite's duration: ``make test`` (issue 25 keeps it at most 3 minutes on the project's 2-core machine)
against the same suite with the ``e2e`` tier's tests in it, as ``make test`` ran them before that tier existed.

Consumes: this checkout, its ``.venv`` (this interpreter) and ``$DATA_MIRROR`` (the tests' MNIST). Produces: a line
per run and ``benchmarks/results/test-suite-<time>.json``, which docs/performance.md quotes.

Each of ``--pairs`` rounds runs both selections, alternating which goes first (A B, B A), so that the machine's
drift hits both alike: ``make test``'s pytest command as the Makefile gives it, and the same command with
``-m "not slow and not services and not faults"`` (every quick-suite test plus the ``e2e`` ones). Per run: the
wall seconds, the CPU seconds of every process pytest waited for (its workers, and the stages, ``dvc`` commands
and servers they waited for), pytest's summary line and the load average. Medians over the rounds.
Run: ``python benchmarks/test_suite.py --pairs 2`` (a pair takes about 8 minutes on 2 cores); nothing else should
run meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from records import cpu_model, write_record  # noqa: E402

#: ``make test``'s recipe (Makefile), with the Makefile's TEST_WORKERS; checked against the Makefile below.
RECIPE = "pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder"
SELECTIONS = {
    "make_test": [],
    "with_e2e": ["-m", "not slow and not services and not faults"],  # make test's selection before the e2e tier
}


def workers() -> str:
    makefile = (ROOT / "Makefile").read_text()
    assert f"\t{RECIPE}\n" in makefile, f"Makefile: make test no longer runs {RECIPE!r}: update {__file__}"
    return re.search(r"^TEST_WORKERS \?= (\d+)", makefile, re.M).group(1)  # type: ignore[union-attr]


def run(extra: list[str], n: str) -> dict:
    command = [sys.executable, "-m", *RECIPE.replace("$(TEST_WORKERS)", n).split(), "-q", *extra]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("MPLBACKEND", "Agg")
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    summary = lines[-1].strip("= ") if lines else proc.stdout[-300:]
    assert proc.returncode == 0, f"{' '.join(command)}: exit {proc.returncode}: {summary}"
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "summary": summary, "load_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    n = workers()
    record: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "test_workers": int(n),
        "selections": {name: " ".join(extra) for name, extra in SELECTIONS.items()},
        "runs": {name: [] for name in SELECTIONS},
    }
    for pair in range(args.pairs):
        order = list(SELECTIONS) if pair % 2 == 0 else list(reversed(SELECTIONS))
        for name in order:
            result = run(SELECTIONS[name], n)
            record["runs"][name].append(result)
            print(f"pair {pair + 1} {name}: {result['wall_s']} s wall, {result['cpu_s']} CPU-s: {result['summary']}",
                  flush=True)  # fmt: skip
    for name, runs in record["runs"].items():
        record[f"{name}_median_wall_s"] = round(statistics.median(r["wall_s"] for r in runs), 1)
        record[f"{name}_median_cpu_s"] = round(statistics.median(r["cpu_s"] for r in runs), 1)
    record["median_wall_ratio"] = round(record["make_test_median_wall_s"] / record["with_e2e_median_wall_s"], 3)
    record["load_average_after"] = os.getloadavg()
    write_record("test-suite", record)


if __name__ == "__main__":
    main()
