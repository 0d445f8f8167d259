"""``train.strategy=mirrored``: MirroredStrategy over two logical CPU devices trains, logs and evaluates as the
default strategy does, on the same global batch.

Each run is ``python -m pipeline.run`` in a process of its own: splitting the CPU into logical devices must happen
before TensorFlow first uses a device, which in this test process other tests have long done.

Tolerances: dropout is off, so the two runs differ only in how the replicas' gradients are summed (the same
global batch of 32, the same initial weights, the same data order). Measured here on 2,000 MNIST images, one
epoch: the epoch's train loss 0.742576 (default) vs 0.742601 (mirrored), test accuracy 0.912 vs 0.908 and test
loss 0.2968 vs 0.2979 on the 1,000 test images of this subset (0.9243 vs 0.9245 on all 10,000). The train loss
is held to 0.1% relative: reading ``batch_size`` per replica (a global batch of 64) makes it 0.977, 32% higher.
Test metrics, which amplify the small drift of the final weights on a few borderline images, are held to 0.015
accuracy (15 of 1,000 images) and 2% relative loss; the global batch of 64 costs 0.016 accuracy on 10,000.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import stage_env
from tests.integration.conftest import share_prepared_data, store
from tests.integration.test_run import logged_models

SAME_RUN = ("train.subset=2000", "train.verbose=silent", "model.conv_dropout=0", "model.dense_dropout=0")
TWO_CPUS = ("train.strategy=mirrored", "train.devices=[/cpu:0,/cpu:1]")


@pytest.mark.services  # two logical CPUs in a process of their own: make test-services (and CI)
def test_mirrored_over_two_logical_cpus_trains_logs_and_evaluates_like_default(
    repo_copy,
    mirror,
    small_conf,
):
    share_prepared_data(repo_copy)
    small = (f"hydra.searchpath=[file://{small_conf}]", "dataset=mnist_small")
    for strategy in (("train.strategy=default",), TWO_CPUS):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.run", *SAME_RUN, *strategy, *small],
            cwd=repo_copy, env=stage_env(mirror), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "mirrored: 2 replicas" in proc.stderr + proc.stdout

    client, runs = store(repo_copy)
    by_strategy = {r.data.params["train.strategy"]: r for r in runs}
    assert set(by_strategy) == {"default", "mirrored"} and len(runs) == 2
    default, mirrored = by_strategy["default"], by_strategy["mirrored"]
    assert (default.data.tags["strategy"], default.data.tags["replicas"]) == ("default", "1")
    assert (mirrored.data.tags["strategy"], mirrored.data.tags["replicas"]) == ("mirrored", "2")
    assert mirrored.data.tags["devices"].endswith("device:CPU:0,/job:localhost/replica:0/task:0/device:CPU:1")
    assert mirrored.data.params["train.batch_size"] == default.data.params["train.batch_size"] == "32"

    # Logged alike: the same metrics, the same training curve's length, a model each; both finished.
    for run in (default, mirrored):
        assert run.info.status == "FINISHED" and len(logged_models(client, run)) == 1
    assert set(mirrored.data.metrics) == set(default.data.metrics)
    steps = [len(client.get_metric_history(r.info.run_id, "batch_loss")) for r in (default, mirrored)]
    assert steps[0] == steps[1] > 0

    d, m = default.data.metrics, mirrored.data.metrics
    print({k: (d[k], m[k]) for k in ("loss", "accuracy", "test_loss", "test_accuracy")})
    assert m["train_samples"] == d["train_samples"] == 2000
    assert m["loss"] == pytest.approx(d["loss"], rel=1e-3)
    assert m["test_loss"] == pytest.approx(d["test_loss"], rel=2e-2)
    assert abs(m["test_accuracy"] - d["test_accuracy"]) <= 0.015
    assert d["test_accuracy"] > 0.85  # it learned: the seed's model on 2,000 images
