"""Cost and effect of ``tf.config.experimental.enable_op_determinism()`` on training the project's CNN.

Measures, on this machine's CPU, the wall time of ``model.fit`` for one epoch (batch 32, shuffle) of the
``Basic_CNN`` from ``pipeline.model.architectures`` on the first ``--samples`` MNIST training images, with op
determinism off (A) and on (B), then the test accuracy and a SHA-256 of the final weights. Runs alternate
A B A B ... for ``--pairs`` pairs so that drift in a shared, noisy machine's load hits both settings
alike; the summary is the median fit time of each setting and the median of the per-pair ratios B/A,
plus whether the weights were bit-identical within each setting and across the two.

Each run is a fresh subprocess (this script's ``--child`` mode): op determinism is process-global and
cannot be turned off once on, and a fresh process also gives both settings the same cold start.

Reads the four IDX ``.gz`` files from ``$DATA_MIRROR`` (or ``--mirror``); writes
``benchmarks/results/determinism-<YYYYmmdd-HHMMSS>.json``.

Run: ``DATA_MIRROR=/work/shared/data/mnist .venv/bin/python benchmarks/determinism.py --pairs 4``
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEED = 42
BATCH_SIZE = 32
RESULT_TAG = "DETERMINISM_RESULT "  # TF and Keras also write to stdout; the parent looks for this line


def read_idx(path: Path, header: int, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(mirror: Path, samples: int):
    import numpy as np

    x_train = read_idx(mirror / "train-images-idx3-ubyte.gz", 16, (-1, 28, 28, 1))[:samples]
    y_train = read_idx(mirror / "train-labels-idx1-ubyte.gz", 8, (-1,))[:samples]
    x_test = read_idx(mirror / "t10k-images-idx3-ubyte.gz", 16, (-1, 28, 28, 1))
    y_test = read_idx(mirror / "t10k-labels-idx1-ubyte.gz", 8, (-1,))
    scale = lambda x: x.astype(np.float32) / 255.0  # noqa: E731
    # int64 labels, as the pipeline feeds them; uint8 would also work but is not what we benchmark.
    return scale(x_train), y_train.astype(np.int64), scale(x_test), y_test.astype(np.int64)


def child(deterministic: bool, samples: int, mirror: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np
    import tensorflow as tf

    # Seed before enabling determinism: enable_op_determinism requires a seed for random ops to be
    # reproducible, and the seed also fixes initial weights, dropout masks and the shuffle order.
    keras.utils.set_random_seed(SEED)
    if deterministic:
        tf.config.experimental.enable_op_determinism()

    from pipeline.config import compose, validate
    from pipeline.model.architectures import build_model

    x_train, y_train, x_test, y_test = load_mnist(mirror, samples)
    cfg = validate(compose())
    model = build_model(cfg.model, 10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=1, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    fit_s = time.perf_counter() - start
    steps = -(-len(x_train) // BATCH_SIZE)

    probs = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y_test))
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    result = {
        "deterministic": deterministic,
        "samples": len(x_train),
        "steps": steps,
        "fit_s": fit_s,
        "ms_per_step": 1000.0 * fit_s / steps,
        "train_loss": float(history.history["loss"][-1]),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": accuracy,
        "weights_sha256": digest.hexdigest(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(deterministic: bool, samples: int, mirror: Path) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "on" if deterministic else "off",
        "--samples",
        str(samples),
        "--mirror",
        str(mirror),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    # A failure under determinism is itself the finding (e.g. an op with no deterministic kernel on
    # CPU), so surface the child's own error text rather than a bare exit status.
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-40:])
    raise RuntimeError(f"child (determinism {'on' if deterministic else 'off'}) exited {proc.returncode}:\n{tail}")


def summarize(a_runs: list[dict], b_runs: list[dict]) -> dict:
    ratios = [b["fit_s"] / a["fit_s"] for a, b in zip(a_runs, b_runs, strict=False)]
    a_hashes = {r["weights_sha256"] for r in a_runs}
    b_hashes = {r["weights_sha256"] for r in b_runs}
    a_accs = {r["test_accuracy"] for r in a_runs}
    b_accs = {r["test_accuracy"] for r in b_runs}
    return {
        "median_fit_s_off": statistics.median(r["fit_s"] for r in a_runs),
        "median_fit_s_on": statistics.median(r["fit_s"] for r in b_runs),
        "median_ms_per_step_off": statistics.median(r["ms_per_step"] for r in a_runs),
        "median_ms_per_step_on": statistics.median(r["ms_per_step"] for r in b_runs),
        "pair_ratios_on_over_off": ratios,
        "median_ratio_on_over_off": statistics.median(ratios),
        "off_all_bit_identical": len(a_hashes) == 1,
        "on_all_bit_identical": len(b_hashes) == 1,
        "off_on_hashes_agree": a_hashes == b_hashes and len(a_hashes) == 1,
        "off_on_accuracies_agree": a_accs == b_accs and len(a_accs) == 1,
        "off_accuracies": sorted(a_accs),
        "on_accuracies": sorted(b_accs),
        "off_distinct_hashes": sorted(a_hashes),
        "on_distinct_hashes": sorted(b_hashes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--mirror", default=os.environ.get("DATA_MIRROR", str(ROOT.parent / "shared/data/mnist")))
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    mirror = Path(args.mirror).resolve()
    if args.child:
        child(args.child == "on", args.samples, mirror)
        return

    started = datetime.datetime.now()
    a_runs: list[dict] = []
    b_runs: list[dict] = []
    print(f"{args.pairs} pairs, {args.samples} samples, batch {BATCH_SIZE}, cpu_count {os.cpu_count()}", flush=True)
    print("pair | off fit s (ms/step) | on fit s (ms/step) | on/off | off acc | on acc", flush=True)
    for i in range(args.pairs):
        a = run_child(False, args.samples, mirror)
        b = run_child(True, args.samples, mirror)
        a_runs.append(a)
        b_runs.append(b)
        print(
            f"{i + 1:4d} | {a['fit_s']:7.1f} ({a['ms_per_step']:5.1f}) | {b['fit_s']:7.1f} ({b['ms_per_step']:5.1f})"
            f" | {b['fit_s'] / a['fit_s']:.3f} | {a['test_accuracy']:.4f} | {b['test_accuracy']:.4f}"
            f" | {a['weights_sha256'][:12]} {b['weights_sha256'][:12]}",
            flush=True,
        )

    s = summarize(a_runs, b_runs)
    print(
        f"median fit s: off {s['median_fit_s_off']:.1f} ({s['median_ms_per_step_off']:.1f} ms/step), "
        f"on {s['median_fit_s_on']:.1f} ({s['median_ms_per_step_on']:.1f} ms/step)"
    )
    print(f"median of per-pair ratios on/off: {s['median_ratio_on_over_off']:.3f}")
    print(
        f"off runs bit-identical: {s['off_all_bit_identical']} ({len(s['off_distinct_hashes'])} distinct hashes); "
        f"on runs bit-identical: {s['on_all_bit_identical']} ({len(s['on_distinct_hashes'])} distinct hashes)"
    )
    print(
        f"off vs on: same weights {s['off_on_hashes_agree']}, same accuracy {s['off_on_accuracies_agree']} "
        f"(off {s['off_accuracies']}, on {s['on_accuracies']})"
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"determinism-{started:%Y%m%d-%H%M%S}.json"
    record = {
        "benchmark": "enable_op_determinism cost on CPU",
        "started": started.isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "pairs": args.pairs,
        "samples": args.samples,
        "batch_size": BATCH_SIZE,
        "seed": SEED,
        "order": "A B alternating, A = determinism off, B = on",
        "cpu_count": os.cpu_count(),
        "tensorflow": a_runs[0]["tensorflow"],
        "keras": a_runs[0]["keras"],
        "runs": [dict(r, pair=i + 1) for i, pair in enumerate(zip(a_runs, b_runs, strict=False)) for r in pair],
        "summary": s,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
