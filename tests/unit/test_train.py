"""Training's bookkeeping, without training: resumable-backup folders and the seed's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import compose, validate
from pipeline.core.errors import ConfigError
from pipeline.model.fit import backup_folder, resolve_precision, split_cpu


def test_two_trainings_of_one_config_never_share_a_backup_folder(tmp_path):
    with backup_folder(tmp_path, "abc") as first:
        with backup_folder(tmp_path, "abc") as second:  # the same config, training at the same time
            assert first == tmp_path / "abc" and second == tmp_path / "abc-1"
    with backup_folder(tmp_path, "abc") as rerun:  # the first ended (or was killed): its rerun resumes there
        assert rerun == tmp_path / "abc"


def test_the_default_trains_as_the_seed_does():
    """Adam with Keras' defaults, batch 32, one shuffled epoch over all samples, in float32."""
    cfg = validate(compose())
    t, o = cfg.train, cfg.optimizer
    assert (o.name, o.learning_rate, t.lr_scale) == ("adam", 0.001, 1.0)
    assert (t.batch_size, t.epochs, t.shuffle, t.subset, t.validation_split) == (32, 1, True, None, 0.0)
    assert resolve_precision(t) == "float32"
    assert cfg.metrics == ["accuracy"]


def test_the_cpu_is_split_only_before_tensorflow_uses_a_device():
    """train.devices naming /cpu:1 splits the CPU into logical devices; once TensorFlow has used a device (this
    process has), that is impossible, and the message names the key instead of TensorFlow's RuntimeError."""
    import tensorflow as tf

    tf.config.list_logical_devices("CPU")  # devices initialised, as after any earlier training in a process
    with pytest.raises(ConfigError, match=r"train.devices: 2 logical CPUs need a process where TensorFlow"):
        split_cpu(2)


def test_strategy_defaults_to_one_device():
    t = validate(compose()).train
    assert (t.strategy, t.devices) == ("default", None)
    t = validate(compose(["train.strategy=mirrored", "train.devices=[/gpu:0,/device:GPU:1]"])).train
    assert t.devices == ["/gpu:0", "/device:GPU:1"]


def test_op_determinism_is_on_for_one_training_only():
    """train.deterministic turns TensorFlow's process-wide op determinism on for the fit and off after it, so a
    later job in the same process (an in-process sweep) trains as its own config says."""
    from pipeline.model import patches
    from pipeline.model.fit import op_determinism

    before = patches.op_determinism_enabled()
    with op_determinism(True) as on:
        assert on and patches.op_determinism_enabled()
    assert patches.op_determinism_enabled() == before
    with op_determinism(True):
        with op_determinism(False) as on:
            assert not on
        assert patches.op_determinism_enabled()
    assert patches.op_determinism_enabled() == before


@pytest.mark.parametrize(
    ("overrides", "samples", "every", "points"),
    [
        ([], 60000, 93, 20),  # the default: 1875 steps, a point every 93
        (["train.epochs=3"], 60000, 281, 20),  # 5625 steps
        (["train.steps_per_execution=5", "train.backup_every=500"], 60000, 90, 20),  # a multiple of 5
        (["train.validation_split=0.2"], 60000, 75, 20),  # 48,000 samples fitted: 1500 steps
        ([], 640, 1, 20),  # train=debug's 20 steps: every one
        ([], 600, 1, 19),  # 19 steps, fewer than 20: every step
        (["train.log_every=7"], 60000, 7, 267),  # an integer is itself
    ],
)
def test_log_every_auto_gives_at_least_20_curve_points(overrides, samples, every, points):
    from pipeline.model.fit import resolve_log_every

    t = validate(compose(overrides)).train
    assert resolve_log_every(t, samples) == every
    steps = t.epochs * -(-int(samples * (1 - t.validation_split)) // t.batch_size)
    assert steps // every == points and every % t.steps_per_execution == 0


# 90 steps: every 4th (22 points) and the last
@pytest.mark.parametrize(("samples", "expected"), [(25 * 8, 25), (7 * 8, 7), (90 * 8, 23)])
def test_the_step_curve_of_an_auto_run_has_20_points_or_every_step(tmp_path, samples, expected):
    """A real fit with log_every: auto: >= 20 curve points (CSV and observers alike) for 20 steps or more,
    every step for fewer."""
    import dataclasses

    import keras

    from pipeline.model.fit import resolve_log_every, step_curve

    t = dataclasses.replace(validate(compose()).train, batch_size=8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(samples, 4)).astype("float32"), rng.integers(0, 3, samples)
    seen: list[int] = []

    class Steps:
        def on_step(self, step, metrics):
            seen.append(step)

        def on_epoch(self, epoch, metrics, seconds):
            pass

    curve = step_curve()(tmp_path / "steps.csv", resolve_log_every(t, samples), ["accuracy"], [Steps()], False)
    model.fit(x, y, batch_size=t.batch_size, epochs=1, verbose=0, callbacks=[curve])
    rows = (tmp_path / "steps.csv").read_text().splitlines()[1:]
    assert len(rows) == len(seen) == expected and len(seen) >= min(20, samples // 8)
    assert seen[-1] == samples // 8  # the last step is always a point
