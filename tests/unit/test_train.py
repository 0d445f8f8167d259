"""Training's bookkeeping, without training: resumable-backup folders and the seed's arithmetic."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize(
    ("overrides", "samples", "expected"),
    [
        ([], 60000, 1875),  # null: one pass
        (["train.steps_per_epoch=300"], 60000, 300),  # a fraction of the pass: 9,600 of 60,000 samples
        (["train.batch_size=128", "train.validation_split=0.1"], 60000, 422),  # 54,000 fitted: ceil(54000 / 128)
        (["train.batch_size=128", "train.steps_per_epoch=422", "train.validation_split=0.1"], 60000, 422),
    ],
)
def test_an_epoch_is_one_pass_or_train_steps_per_epoch_batches(overrides, samples, expected):
    from pipeline.model.fit import epoch_steps, resolve_log_every

    t = validate(compose(overrides)).train
    assert epoch_steps(t, samples) == expected
    assert resolve_log_every(t, samples) == expected // 20  # the curve's 20 points follow the steps that run


def test_steps_per_epoch_is_a_cap_so_the_fast_profile_runs_on_a_subset():
    """train=fast's 400 batches of 128 are 85% of MNIST's epoch; on a 300-sample subset (3 batches) the epoch
    is the whole subset, and the schedule and the curve count those 3 steps."""
    from pipeline.model.fit import epoch_steps, resolve_log_every

    t = validate(compose(["train=fast", "train.subset=300"])).train
    assert t.steps_per_epoch == 400 and epoch_steps(t, 300) == 3 and resolve_log_every(t, 300) == 1
    assert epoch_steps(t, 60000) == 400


def test_the_cosine_schedule_warms_up_in_a_line_then_decays_to_zero_along_a_cosine():
    """train.lr_schedule=cosine over 100 steps with warmup 0.1: 0 at the first step, the peak (rate x lr_scale)
    at step 10, half of it halfway through the decay (step 55), falling every step after the peak, 0 at the
    end; constant is the peak throughout."""
    from pipeline.model.fit import learning_rate

    t = validate(compose(["train.lr_schedule=cosine", "train.warmup=0.1"])).train
    schedule = learning_rate(t, 0.004, 100)
    rates = np.array([float(schedule(step)) for step in range(101)])
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.002) and rates[10] == pytest.approx(0.004)
    assert np.all(np.diff(rates[:11]) > 0) and np.all(np.diff(rates[10:]) < 0)
    assert rates[55] == pytest.approx(0.002) and rates[100] == pytest.approx(0.0, abs=1e-9)
    no_warmup = learning_rate(validate(compose(["train.lr_schedule=cosine"])).train, 0.004, 100)
    assert float(no_warmup(0)) == pytest.approx(0.004) and float(no_warmup(50)) == pytest.approx(0.002)
    assert learning_rate(validate(compose()).train, 0.004, 100) == 0.004


def test_a_model_trained_on_a_schedule_saves_and_loads_with_it(tmp_path):
    """The schedule is Keras' own CosineDecay: the saved model loads in safe mode (as evaluate, predict and the
    served model load it), with the schedule, and a fit's optimizer follows it step by step."""
    from pipeline.model.fit import compile_model
    from pipeline.model.score import load_model

    cfg = validate(compose(["train.lr_schedule=cosine", "train.warmup=0.25", "train.lr_scale=2"]))
    with pytest.raises(ValueError, match="needs the fit's number of steps"):
        compile_model(cfg, "float32")
    model = compile_model(cfg, "float32", steps=8)
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 16)
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)  # 2 of the 4 batches, 2 of 8 steps
    assert int(model.optimizer.iterations) == 2
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)  # step 2 of a 2-step warm-up to 0.002
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    schedule = loaded.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay" and schedule["config"]["warmup_steps"] == 2


def test_auto_precision_is_float32_where_onednn_is_capped_below_bfloat16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (an AVX2-only CPU, as benchmarks/precision_isa.py emulates one) leaves oneDNN no
    bfloat16 kernels: precision auto is float32 there, whatever /proc/cpuinfo says; a cap with bfloat16, or
    none, leaves the CPU's own answer."""
    from pathlib import Path

    from pipeline.model.fit import cpu_has_bf16

    native = any(flag in Path("/proc/cpuinfo").read_text() for flag in ("avx512_bf16", "amx_bf16"))
    assert cpu_has_bf16({}) == native == cpu_has_bf16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert not cpu_has_bf16({"ONEDNN_MAX_CPU_ISA": "AVX2"}) and not cpu_has_bf16({"DNNL_MAX_CPU_ISA": "avx512_core"})
    import tensorflow as tf

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_precision(validate(compose(["train=fast"])).train) == ("mixed_float16" if gpu else "float32")


def test_auto_precision_takes_bfloat16_only_where_the_probe_finds_it_faster(monkeypatch, tmp_path):
    """AVX512_BF16 alone does not make bfloat16 faster (twice float32 on an AMD EPYC, about half on an Intel Xeon
    without AMX): the probe's convolution decides, with a margin, once per CPU (then read back from the cache)."""
    from pipeline.model import fit as fit_module

    assert fit_module.bf16_pays({"float32": 0.030, "bfloat16": 0.015})  # twice as fast: bfloat16
    assert not fit_module.bf16_pays({"float32": 0.030, "bfloat16": 0.049})  # slower: float32
    assert not fit_module.bf16_pays({"float32": 0.030, "bfloat16": 0.027})  # within the margin: float32's accuracy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(fit_module, "cpu_has_bf16", lambda: True)
    probes = []

    def probe(repeats: int = 5) -> dict[str, float]:
        probes.append(repeats)
        return {"float32": 0.030, "bfloat16": 0.012}

    monkeypatch.setattr(fit_module, "probe_conv_seconds", probe)
    assert fit_module.bf16_is_faster() and fit_module.bf16_is_faster() and len(probes) == 1  # probed once
    (record,) = (tmp_path / "mnist-mlops-pipeline" / "precision").glob("*.json")
    assert json.loads(record.read_text())["bf16_faster"] is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # another oneDNN cap: another record, probed again
    assert fit_module.bf16_is_faster() and len(probes) == 2


def test_the_probe_times_both_dtypes_of_the_seed_networks_convolution():
    from pipeline.model.fit import cpu_has_bf16, probe_conv_seconds

    if not cpu_has_bf16():  # bf16_is_faster probes only such CPUs: elsewhere oneDNN refuses bfloat16 convolutions
        pytest.skip("the probe runs only on CPUs with bfloat16 arithmetic (AVX512_BF16 or AMX)")

    seconds = probe_conv_seconds(repeats=2)
    assert set(seconds) == {"float32", "bfloat16"} and all(0 < s < 10 for s in seconds.values())
