"""The config: params.yaml is conf/'s composition, and the schema refuses bad input by key name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.config import ConfigError, compose, load_params, validate

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_composition_of_conf():
    # Byte for byte what DVC's Hydra integration writes, so `dvc exp run` never shows a spurious diff.
    assert (ROOT / "params.yaml").read_text() == OmegaConf.to_yaml(compose())


def test_defaults_reproduce_the_seed():
    cfg = load_params(ROOT / "params.yaml")
    assert cfg.optimizer.name == "adam" and cfg.optimizer.learning_rate == 0.001
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.shuffle, cfg.train.subset) == (32, 1, True, None)
    assert cfg.train.precision == "float32" and cfg.train.lr_scale == 1.0
    assert cfg.loss == "sparse_categorical_crossentropy" and cfg.metrics == ["accuracy"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sgd", {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
        ("rmsprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False}),
        ("adam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}),
    ],
)
def test_optimizer_groups_hold_keras_defaults(name, expected):
    import keras

    from pipeline.model import build_optimizer

    cfg = validate(compose([f"optimizer={name}"]))
    opt = build_optimizer(cfg.optimizer)
    keras_default = type(opt)().get_config()
    for key, value in expected.items():
        assert getattr(cfg.optimizer, key) == value
        assert keras_default[key] == pytest.approx(value), key  # our defaults are Keras' own
    assert isinstance(opt, keras.optimizers.Optimizer)


def test_lr_scale_multiplies_the_learning_rate():
    from pipeline.model import build_optimizer

    cfg = validate(compose(["train=fast"]))
    assert float(build_optimizer(cfg.optimizer, cfg.train.lr_scale).learning_rate) == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=0"], "'train.batch_size': 0; allowed: an integer >= 1"),
        (["train.epochs=0"], "'train.epochs': 0"),
        (["train.subset=0"], "'train.subset': 0; allowed: null (all samples) or an integer >= 1"),
        (["optimizer.learning_rate=-1"], "'optimizer.learning_rate': -1.0; allowed: a number > 0"),
        (["model.conv_dropout=1.0"], "'model.conv_dropout': 1.0; allowed: a number in [0, 1)"),
        (["train.precision=fp8"], "'train.precision': 'fp8'; allowed: float32 | mixed_bfloat16"),
        (["train.epochs=three"], "bad value for 'train.epochs': 'three'"),
        (["+train.epoch=3"], "unknown key 'train.epoch'"),
        (["+learning_rate=3"], "unknown key 'learning_rate'"),
        (["optimizer=sgd", "+optimizer.beta_1=0.5"], "unknown key 'optimizer.beta_1'"),
        (["metrics=[accuracy,auc]"], "'metrics[1]': 'auc'"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        validate(compose(overrides), source="overrides")
    assert message in str(err.value)
    assert str(err.value).startswith("overrides: ")


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        (["loss=categorical_crossentropy"], "sparse_categorical_crossentropy"),
        (["metrics=[categorical_accuracy]"], "'accuracy'"),
    ],
)
def test_seed_trap_is_refused_with_an_explanation(overrides, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert "one-hot" in str(err.value) and "0.0992" in str(err.value) and fix in str(err.value)


def test_unknown_optimizer_in_params_lists_choices(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["optimizer"]["name"] = "adagrad"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"params.yaml: optimizer.name='adagrad' .* sgd, rmsprop, adam"):
        load_params(path)


def test_params_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ConfigError, match="unsafe.yaml: not valid YAML"):  # safe loader: no object tags
        load_params(unsafe)
