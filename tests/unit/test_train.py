"""Training's bookkeeping, without training: resumable-backup folders and the seed's arithmetic."""

from __future__ import annotations

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
