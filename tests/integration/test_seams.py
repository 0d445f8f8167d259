"""The seams of the design, each shown working: metric names come from the config, op determinism belongs to
one training, a tuner never sees the test split, and a new stage is added by following CONTRIBUTING.md's recipe.

Small real data (the MNIST subset), real MLflow stores under tmp_path, real Hydra and DVC.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap

import mlflow
import pytest

from pipeline import tracking
from pipeline.stages import train
from tests.conftest import stage_env
from tests.integration.conftest import store


def test_a_metric_named_as_keras_names_it_has_a_real_curve_and_epoch_metric(make_cfg):
    """With ``metrics: [sparse_categorical_accuracy]`` the step curve, its MLflow twin and the epoch metric all
    carry that metric (they read the config's name, not a literal 'accuracy')."""
    cfg = make_cfg("metrics=[sparse_categorical_accuracy]", "train.log_every=4", "train.subset=256")
    with tracking.start_run(cfg) as run:
        train.run(cfg)
    with open(cfg.paths.steps, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "sparse_categorical_accuracy"]
    assert len(rows) == 256 // 32 // 4 and all(0 <= float(r["sparse_categorical_accuracy"]) <= 1 for r in rows)
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking))
    curve = client.get_metric_history(run.info.run_id, "batch_sparse_categorical_accuracy")
    assert [p.step for p in curve] == [int(r["step"]) for r in rows]
    assert [round(p.value, 6) for p in curve] == [float(r["sparse_categorical_accuracy"]) for r in rows]
    epoch = client.get_run(run.info.run_id).data.metrics["sparse_categorical_accuracy"]
    assert not math.isnan(epoch) and 0 < epoch <= 1


def test_an_in_process_sweep_gives_each_job_its_own_op_determinism(app, repo_copy):
    """``-m train=default,fast`` on the basic launcher, one process: the default job trains with op determinism,
    the fast job after it without (train/fast.yaml: deterministic false), as each config says."""
    status, out = app("-m", "train=default,fast", "train.subset=300", "train.verbose=silent", "registry.enabled=false")
    assert status == 0, out[-3000:]
    _, runs = store(repo_copy)
    jobs = {
        r.data.tags["overrides"].split()[0]: r.data.tags.get("op_determinism")
        for r in runs
        if r.data.tags.get("overrides")
    }
    assert jobs == {"train=default": "true", "train=fast": "false"}, jobs


def test_a_tuner_without_a_validation_split_is_refused_before_any_training(app, repo_copy):
    status, out = app("-m", "hparams_search=optuna_lr", "train.validation_split=0", "hydra.sweeper.n_trials=1")
    assert status == 2, out[-3000:]
    assert "a tuner chooses on the validation split, never the test split" in out
    assert "Traceback" not in out
    _, runs = store(repo_copy)
    assert not [r for r in runs if "overrides" in r.data.tags and r.data.metrics.get("test_accuracy")]


@pytest.mark.e2e  # dvc repro of the new stage
def test_a_new_stage_follows_the_recipe(repo_copy, mirror):
    """CONTRIBUTING.md's recipe for a stage, done as a newcomer would: a module in pipeline/stages/ with run()
    and main(), its output path in the schema and conf/, a stage in dvc.yaml whose code deps
    ``python -m pipeline.core.closure --update`` writes; then ``dvc repro`` runs it and the checks still pass."""
    repo = repo_copy
    (repo / "pipeline" / "stages" / "summary.py").write_text(
        textwrap.dedent('''\
        """Stage ``summary``: how many images of each class the processed training split holds.

        Consumes: paths.processed_dir/train.npz. Produces: paths.summary (JSON). Run: dvc repro summary.
        """

        from collections import Counter

        from pipeline.config import Config
        from pipeline.core.files import write_json
        from pipeline.core.timing import Timer
        from pipeline.data.formats import load_split
        from pipeline.stages import stage_main


        def run(cfg: Config) -> dict[str, int]:
            _, y = load_split(cfg.paths.processed_dir, "train", cfg.dataset.num_classes)
            counts = {cfg.dataset.classes[k]: int(v) for k, v in sorted(Counter(y.tolist()).items())}
            write_json(cfg.paths.summary, counts)
            return counts


        def main() -> None:
            def job(cfg: Config, timer: Timer) -> None:
                run(cfg)
                timer.mark("summary")

            stage_main("summary", job)


        if __name__ == "__main__":
            main()
        ''')
    )
    schema = repo / "pipeline" / "config" / "schema.py"
    schema.write_text(schema.read_text().replace("    data_cache: str\n", "    data_cache: str\n    summary: str\n", 1))
    conf = repo / "conf" / "config.yaml"
    conf.write_text(
        conf.read_text().replace(
            "  data_cache: .cache/data",
            "  summary: reports/summary.json  # per-class counts\n  data_cache: .cache/data",
        )
    )
    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(
        dvc_yaml.read_text().replace(
            "\n# The training curve",
            textwrap.indent(
                "summary:\n  cmd: python3 -m pipeline.stages.summary\n  deps:\n    - pipeline/stages/summary.py\n"
                "    - ${paths.processed_dir}\n  outs:\n    - ${paths.summary}\n",
                "  ",
            )
            + "\n# The training curve",
        )
    )
    env = stage_env(mirror)
    for cmd in (["-m", "pipeline.config"], ["-m", "pipeline.core.closure", "--update", "dvc.yaml"]):
        subprocess.run([sys.executable, *cmd], cwd=repo, env=env, check=True, capture_output=True)
    assert "pipeline/config/schema.py" in dvc_yaml.read_text().split("  summary:\n", 1)[1]  # the closure found it
    proc = subprocess.run(["dvc", "repro", "summary"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = json.loads((repo / "reports" / "summary.json").read_text())
    assert set(counts) == {str(d) for d in range(10)} and sum(counts.values()) == 60_000
    check = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_closure.py",
         "tests/unit/test_imports.py", "tests/unit/test_config.py"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:]
