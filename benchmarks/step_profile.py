"""Where a training step's time goes, op by op (TensorFlow's profiler), for any training config.

Consumes: the processed training split (``--processed-dir``, default ``data/processed``). Produces: a table
on stdout and ``benchmarks/results/step-profile-<time>.json``: the step's wall milliseconds, and for each
TensorFlow op type the milliseconds per step spent in it, summed over the executor's threads (TensorFlow
runs independent ops side by side, so the sum exceeds the wall time), grouped into convolutions, matmuls,
the optimizer's update, dropout, and the rest.

It builds, seeds and compiles the model as the train stage does (``pipeline.model.fit.seeded_model``, the
kernels of ``train.fast_kernels``) and loads the data as it does (``pipeline.data.formats.load_split``), fits ``--warmup`` steps to trace and warm up, then profiles ``--steps`` steps with
``tf.profiler.experimental`` and reads the trace (XPlane) it writes.

Run: ``python benchmarks/step_profile.py --steps 200 [overrides...]``, e.g. ``train.fast_kernels=false``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GROUPS = {  # a word in the op's node name (its layer or the optimizer) -> group; the first match wins
    "/adam/": "optimizer",
    "/sgd/": "optimizer",
    "/rmsprop/": "optimizer",
    "dropout": "dropout",
    "conv2d": "convolution",
    "dense": "dense (matmul)",
    "max_pooling": "pooling",
    "activation": "activation",
}


def group_of(node: str, op_type: str) -> str:
    if "Conv2D" in op_type:  # forward (fused with its ReLU, so named after the activation) and backward
        return "convolution"
    return next((g for key, g in GROUPS.items() if key in node.lower()), "other (loss, metrics, input)")


def op_times(logdir: str) -> dict[tuple[str, str], float]:
    """Seconds per (group, op type) in the trace: the events on TensorFlow's executor threads named
    ``<node>:<op type>`` (not the executor's own ``ExecutorState::Process`` spans that enclose them)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    [path] = Path(logdir).rglob("*.xplane.pb")
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                node, sep, op_type = name.rpartition(":")
                if sep and node and "::" not in name:
                    seconds[group_of(node, op_type), op_type] += event.duration_ps / 1e12
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--processed-dir", default=str(ROOT / "data" / "processed"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from pipeline.model.runtime import import_tensorflow

    tf = import_tensorflow()
    from pipeline.config import compose, validate
    from pipeline.data.formats import load_split
    from pipeline.model.fit import seeded_model
    from pipeline.model.patches import fast_kernels

    cfg = validate(compose(args.overrides))
    t = cfg.train
    model, _ = seeded_model(cfg, steps=args.warmup + args.steps)  # sizes a train.lr_schedule
    n = t.batch_size * (args.warmup + args.steps)
    x, y = load_split(args.processed_dir, "train", cfg.dataset.num_classes)
    warm, timed = slice(0, t.batch_size * args.warmup), slice(t.batch_size * args.warmup, n)
    with fast_kernels(model, enabled=t.fast_kernels) as swapped, tempfile.TemporaryDirectory() as logdir:
        model.fit(x[warm], y[warm], batch_size=t.batch_size, epochs=1, verbose=0)
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        model.fit(x[timed], y[timed], batch_size=t.batch_size, epochs=1, verbose=0)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        seconds = op_times(logdir)
    per_step = {key: 1000 * s / args.steps for key, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    groups: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, float] = collections.defaultdict(float)
    for (group, op), ms in per_step.items():
        groups[group] += ms
        ops[op] += ms
    print(f"{' '.join(args.overrides) or 'defaults'}: kernels swapped in: {', '.join(swapped) or 'none'}")
    print(f"step: {1000 * wall / args.steps:.1f} ms wall (profiled), batch {t.batch_size}")
    print(f"op time per step, summed over threads: {sum(per_step.values()):.1f} ms")
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {ms:6.2f} ms")
        for (group, op), op_ms in per_step.items():
            if group == name and op_ms >= 0.2:
                print(f"      {op:45s} {op_ms:6.2f} ms")
    record = ROOT / "benchmarks" / "results" / f"step-profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record.write_text(
        json.dumps(
            {
                "overrides": args.overrides,
                "steps": args.steps,
                "swapped": swapped,
                "step_ms": round(1000 * wall / args.steps, 2),
                "groups_ms": {k: round(v, 3) for k, v in groups.items()},
                "ops_ms": {k: round(v, 3) for k, v in ops.items()},
                "group_ops_ms": {f"{g}: {op}": round(v, 3) for (g, op), v in per_step.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {record.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
