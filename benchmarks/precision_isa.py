"""``precision: auto`` on a CPU without AVX512_BF16: bfloat16 against float32 step time, with oneDNN capped at AVX2.

Consumes: the processed training split (``--processed-dir``, default ``data/processed``). Produces: a table on
stdout and ``benchmarks/results/precision-isa-<time>.json``: for each variant, the milliseconds of a training
step (the fast profile's batch, after ``--warmup`` steps of tracing and warm-up) in every round, their median,
or the error that ended it; and what ``train.precision: auto`` resolves to in each variant's environment.

An AVX2-only CPU is emulated on this one: ``ONEDNN_MAX_CPU_ISA=AVX2`` (the bundled oneDNN's name for the cap; its
verbose mode, ``ONEDNN_VERBOSE=1``, then reports ``isa:Intel AVX2`` and ``brg_conv_fwd:avx2`` kernels) keeps
oneDNN to AVX2. TensorFlow still reads AVX512_BF16 from the CPU and hands bfloat16 convolutions to oneDNN, which
has none there and refuses them (the ``onednn`` bfloat16 variant records the error); on a real AVX2 CPU
TensorFlow runs them on its own kernels instead, which ``TF_ENABLE_ONEDNN_OPTS=0`` selects here (this wheel's
own kernels use no AVX-512: TensorFlow's start-up notice lists it among the instructions it was not built for).

Each variant runs in a fresh process (the cap and oneDNN's switch are read once, at start-up), the variants
alternating round by round so that the host's load falls on all alike.

Run: ``python benchmarks/precision_isa.py --rounds 2 --steps 60``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from records import cpu_model, write_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
#: name -> (environment, train.precision)
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "native float32": ({}, "float32"),
    "native mixed_bfloat16": ({}, "mixed_bfloat16"),
    "AVX2 float32": (AVX2, "float32"),
    "AVX2 mixed_bfloat16, oneDNN": (AVX2, "mixed_bfloat16"),
    "AVX2 mixed_bfloat16, TensorFlow's kernels": ({**AVX2, "TF_ENABLE_ONEDNN_OPTS": "0"}, "mixed_bfloat16"),
}

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pipeline.model.runtime import import_tensorflow
import_tensorflow()
from pipeline.config import compose, validate
from pipeline.data.formats import load_split
from pipeline.model.fit import resolve_precision, seeded_model
from pipeline.model.patches import fast_kernels
warmup, steps = {warmup}, {steps}
auto = resolve_precision(validate(compose(["train=fast", "train.precision=auto"])).train)
cfg = validate(compose(["train=fast", "train.precision={precision}"]))
t = cfg.train
model, precision = seeded_model(cfg, steps=warmup + steps)
x, y = load_split({processed!r}, "train", cfg.dataset.num_classes)
b = t.batch_size
with fast_kernels(model, enabled=t.fast_kernels):
    model.fit(x[: b * warmup], y[: b * warmup], batch_size=b, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x[b * warmup : b * (warmup + steps)], y[b * warmup : b * (warmup + steps)], batch_size=b, verbose=0)
    wall = time.perf_counter() - start
print(json.dumps({{"ms_per_step": 1000 * wall / steps, "precision": precision, "auto": auto}}))
"""


def run(name: str, args: argparse.Namespace) -> dict:
    env_extra, precision = VARIANTS[name]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    code = CHILD.format(
        root=str(ROOT), warmup=args.warmup, steps=args.steps, precision=precision, processed=args.processed_dir
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        # TensorFlow's last lines name only the error's class; oneDNN's reason is in the line with "message:"
        reason = [line for line in lines if "message:" in line] or [line for line in lines if "Error" in line]
        return {"error": (reason[-1] if reason else lines[-1]).strip()[:400]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--processed-dir", default=str(ROOT / "data" / "processed"))
    args = parser.parse_args()
    results: dict[str, dict] = {name: {"env": VARIANTS[name][0], "ms_per_step": []} for name in VARIANTS}
    loads = [os.getloadavg()[0]]
    for i in range(args.rounds):
        for name in VARIANTS:
            out = run(name, args)
            entry = results[name]
            if "error" in out:
                entry["error"] = out["error"]
            else:
                entry["ms_per_step"].append(round(out["ms_per_step"], 2))
                entry["precision"], entry["auto"] = out["precision"], out["auto"]
            shown = f"{out['ms_per_step']:8.1f} ms/step, auto: {out['auto']}" if "error" not in out else out["error"]
            print(f"round {i + 1} {name:45s} {shown}", flush=True)
            loads.append(os.getloadavg()[0])
    for entry in results.values():
        if entry["ms_per_step"]:
            entry["median_ms"] = round(statistics.median(entry["ms_per_step"]), 2)
    f32, bf16 = results["AVX2 float32"], results["AVX2 mixed_bfloat16, TensorFlow's kernels"]
    summary = {
        "avx2_auto": f32.get("auto"),
        "avx2_bf16_over_float32": round(bf16["median_ms"] / f32["median_ms"], 2) if "median_ms" in bf16 else None,
        "native_auto": results["native float32"].get("auto"),
        "native_bf16_over_float32": round(
            results["native mixed_bfloat16"]["median_ms"] / results["native float32"]["median_ms"], 2
        ),
    }
    record = {
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "batch_size": 128,
        "variants": results,
        "summary": summary,
        "load_average_1min": [round(v, 2) for v in loads],
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    write_record("precision-isa", record)


if __name__ == "__main__":
    main()
