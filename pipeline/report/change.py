"""The change report: what a branch's experiment changed against a baseline, as a pull request shows it.

Consumes: a git revision ``base``, the project at the workspace and at ``base`` (read through ``dvc.api``: git
files from git, cached outputs from DVC's cache), both evaluations' MLflow runs and their saved test
predictions. Produces: a Markdown file (default ``reports/change.md``, ignored by git) and ``change.png`` beside
it: the params diff and metrics diff as DVC prints them (``--md``), both revisions' training curves and
per-class error rates in one image, a link to each MLflow run, and the registry gate's rule applied to the two
models (McNemar's exact test on the same test images), so a reviewer sees whether the change would be promoted.

Run: ``make report BASE=main``. The baseline's outputs must be in DVC's cache: run it once (``git checkout
BASE && dvc repro``, then come back) or ``dvc pull`` them; the report says so in one line otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, validate
from pipeline.core.errors import DataError, UserError
from pipeline.core.files import atomic_path

WORKSPACE = "workspace"
#: Where ``make ui`` serves a local store's UI (pipeline.tracking cli's default host and port).
LOCAL_UI = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Side:
    """One revision of the experiment: its config, its evaluation's run record and its plot data."""

    rev: str  # a git revision, or "workspace"
    cfg: Config
    record: dict[str, Any]  # paths.eval_info: run_id, experiment_id, model_id, train_run_id
    steps: list[dict[str, str]]  # paths.steps rows
    per_class: list[dict[str, str]]  # paths.per_class rows


def read_at(root: Path, path: str, rev: str) -> str:
    """A file of the project at ``rev`` (the working tree for "workspace"): git's copy, or DVC's cached one."""
    if rev == WORKSPACE:
        try:
            return (root / path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: cannot read it ({exc.strerror}): run the pipeline first (dvc repro)") from None
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return str(dvc.api.read(path, repo=str(root), rev=rev, mode="r"))
    except (DvcException, FileNotFoundError) as exc:
        raise DataError(
            f"{path} at {rev}: not in git nor in DVC's cache ({type(exc).__name__}): run the baseline once "
            f"(git checkout {rev} && dvc repro, then come back) or dvc pull it"
        ) from None


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def side(root: Path, rev: str) -> Side:
    """Everything the report needs of one revision, each file from that revision."""
    import yaml

    source = f"params.yaml at {rev}"
    try:
        cfg = validate(yaml.safe_load(read_at(root, "params.yaml", rev)), source=source)
    except yaml.YAMLError as exc:
        raise DataError(f"{source}: not valid YAML: {exc}") from None
    paths = cfg.paths
    try:
        record = json.loads(read_at(root, paths.eval_info, rev))
    except json.JSONDecodeError as exc:
        raise DataError(f"{paths.eval_info} at {rev}: not a run record ({exc})") from None
    return Side(rev, cfg, record, rows(read_at(root, paths.steps, rev)), rows(read_at(root, paths.per_class, rev)))


def dvc_diff(root: Path, what: str, base: str) -> str:
    """``dvc params diff BASE --md`` or ``dvc metrics diff BASE --md``, as DVC prints it."""
    cmd = [sys.executable, "-m", "dvc", what, "diff", base, "--md"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DataError(f"dvc {what} diff {base}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout.strip() or f"(no {what} changed)"


def run_url(tracking_uri: str, record: dict[str, Any]) -> str:
    """The MLflow UI's page of the run a record names: the tracking server's own UI, else ``make ui``'s."""
    ui = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{ui}/#/experiments/{record.get('experiment_id')}/runs/{record['run_id']}"


def plots(base: Side, head: Side, path: Path) -> None:
    """Both revisions' training curves (the headline metric) and per-class error rates, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4))
    metric = head.cfg.metric.value
    for s, colour in ((base, "tab:gray"), (head, "tab:blue")):
        points = [(int(r["step"]), float(r[metric])) for r in s.steps if r.get(metric)]
        curve.plot([p[0] for p in points], [p[1] for p in points], color=colour, label=s.rev)
    curve.set(xlabel="training step", ylabel=f"{metric} (running mean over the epoch)", title="training curve")
    classes = [r["class"] for r in head.per_class]
    x = np.arange(len(classes))
    for offset, s, colour in ((-0.2, base, "tab:gray"), (0.2, head, "tab:blue")):
        rates = {r["class"]: float(r["error_rate"]) for r in s.per_class}
        bars.bar(x + offset, [rates.get(c, np.nan) for c in classes], width=0.4, color=colour, label=s.rev)
    bars.set(xticks=x, xticklabels=classes, xlabel="class", ylabel="test error rate", title="error rate per class")
    for ax in (curve, bars):
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def gate_between(base: Side, head: Side) -> str:
    """The registry gate's rule with the baseline's model as champion and the workspace's as challenger."""
    from pipeline.tracking.gate import decide, mcnemar
    from pipeline.tracking.registry import load_predictions
    from pipeline.tracking.store import tracking_uri

    uri = tracking_uri(head.cfg.tracking)
    (pb, lb), (ph, lh) = (load_predictions(s.record["run_id"], uri) for s in (base, head))
    if lb.shape != lh.shape or not np.array_equal(lb, lh):
        return "The two models were scored on different test sets: the gate cannot compare them."
    verdict = decide(ph == lh, pb == lb, head.cfg.registry)
    b, c, p = mcnemar(pb == lb, ph == lh)
    acc_b, acc_h = float(np.mean(pb == lb)), float(np.mean(ph == lh))
    outcome = "**would be promoted**" if verdict.promote else "**would not be promoted**"
    return (
        f"On the same {len(lh):,} test images the workspace's model ({acc_h:.4f}) {outcome} over {base.rev}'s "
        f"({acc_b:.4f}): b={b} (only {base.rev}'s right), c={c} (only the workspace's right), McNemar p={p:.3g}; "
        f"{verdict.reason} (alpha {head.cfg.registry.alpha}, significance "
        f"{'required' if head.cfg.registry.require_significance else 'not required'})."
    )


def report(root: Path, base_rev: str, out: Path) -> str:
    """Write the report to ``out`` (and its image beside it); return the Markdown."""
    from pipeline.tracking.store import tracking_uri

    base, head = side(root, base_rev), side(root, WORKSPACE)
    image = out.with_suffix(".png")
    plots(base, head, image)
    uri = tracking_uri(head.cfg.tracking)
    text = "\n".join(
        [
            f"# Change report: workspace against {base_rev}",
            "",
            "## Params (`dvc params diff`)",
            "",
            dvc_diff(root, "params", base_rev),
            "",
            "## Metrics (`dvc metrics diff`)",
            "",
            dvc_diff(root, "metrics", base_rev),
            "",
            "## Plots",
            "",
            f"![training curve and error rate per class, {base_rev} and workspace]({image.name})",
            "",
            "## MLflow runs",
            "",
            f"- {base_rev}: [{base.record['run_id']}]({run_url(uri, base.record)})",
            f"- workspace: [{head.record['run_id']}]({run_url(uri, head.record)})",
            "",
            "## The registry gate",
            "",
            gate_between(base, head),
            "",
        ]
    )
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the baseline's git revision (a branch, tag or commit)")
    parser.add_argument("--out", default="reports/change.md", help="the Markdown file (its image beside it)")
    args = parser.parse_args(argv)
    from pipeline.tracking.store import project_root

    root = project_root()
    if subprocess.run(["git", "rev-parse", "--verify", "-q", f"{args.base}^{{commit}}"], cwd=root,
                      capture_output=True, check=False).returncode != 0:  # fmt: skip
        raise UserError(f"--base {args.base}: not a git revision of {root}")
    out = root / args.out
    report(root, args.base, out)
    print(f"wrote {args.out} and {out.with_suffix('.png').name}")
