"""The config: params.yaml is conf/'s composition, the schema refuses bad input by key name (with a "did you
mean"), the Hydra command line is checked before Hydra runs, and an optimizer is one dataclass + one YAML."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.config import compose, load_params, validate
from pipeline.core.errors import ConfigError
from pipeline.run.overrides import check, prepare_argv
from tests.conftest import ROOT


def test_params_yaml_is_the_composition_of_conf():
    # Byte for byte what DVC's Hydra integration writes, so `dvc exp run` never shows a spurious diff.
    assert (ROOT / "params.yaml").read_text() == OmegaConf.to_yaml(compose())


def test_defaults_reproduce_the_seed():
    cfg = load_params(ROOT / "params.yaml")
    assert cfg.optimizer.name == "adam" and cfg.optimizer.learning_rate == 0.001
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.shuffle, cfg.train.subset) == (32, 1, True, None)
    assert cfg.train.precision == "float32" and cfg.train.lr_scale == 1.0
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.metrics == ["accuracy"] and cfg.metric == "accuracy"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=0"], "'train.batch_size': 0; allowed: an integer >= 1"),
        (["train.epochs=0"], "'train.epochs': 0"),
        (["train.subset=0"], "'train.subset': 0; allowed: null (all samples) or an integer >= 1"),
        (["optimizer.learning_rate=-1"], "'optimizer.learning_rate': -1.0; allowed: a number > 0"),
        (["train.precision=fp8"], "'train.precision': 'fp8'; allowed: float32 | mixed_bfloat16"),
        (["train.epochs=three"], "bad value for 'train.epochs': 'three'"),
        (["+train.epoch=3"], "unknown key 'train.epoch' (not a field of 'train'); did you mean 'train.epochs'?"),
        (["+learning_rate=3"], "unknown key 'learning_rate'"),
        (["optimizer=sgd", "+optimizer.beta_1=0.5"], "unknown key 'optimizer.beta_1'"),
        (["metrics=[accuracy,auc]"], "'metrics[1]': 'auc'"),
        (["train.steps_per_execution=0"], "'train.steps_per_execution': 0; allowed: an integer >= 1"),
        (
            ["train.steps_per_execution=30", "train.log_every=100", "train.backup_every=60"],
            "'train.log_every': 100; allowed: a multiple of train.steps_per_execution=30",
        ),
        (["train.log_every=0"], "'train.log_every': 0; allowed: auto or an integer >= 1"),
        (["train.log_every=often"], "'train.log_every': 'often'; allowed: auto or an integer >= 1"),
        (["train.steps_per_execution=50", "train.backup_every=120"], "'train.backup_every': 120; allowed: a multiple"),
        (["train.strategy=horovod"], "'train.strategy': 'horovod'; allowed: default | mirrored"),
        (["train.steps_per_epoch=0"], "'train.steps_per_epoch': 0; allowed: null (one pass over the data) or an"),
        (
            ["train.steps_per_execution=5", "train.log_every=5", "train.backup_every=5", "train.steps_per_epoch=12"],
            "'train.steps_per_epoch': 12; allowed: a multiple of train.steps_per_execution=5",
        ),
        (["train.lr_schedule=onecycle"], "'train.lr_schedule': 'onecycle'; allowed: constant | cosine"),
        (["train.lr_schedule=cosine", "train.warmup=1.0"], "'train.warmup': 1.0; allowed: a number in [0, 1)"),
        (["train.lr_schedule=cosine", "train.warmup=-0.1"], "'train.warmup': -0.1; allowed: a number in [0, 1)"),
        (["train.warmup=0.1"], "'train.warmup': 0.1; allowed: 0.0 with train.lr_schedule=constant"),
        (
            ["train.devices=[/cpu:0,/cpu:1]"],
            "'train.devices': ['/cpu:0', '/cpu:1']; allowed: null with train.strategy=default",
        ),
        (
            ["train.strategy=mirrored", "train.devices=[/tpu:0]"],
            "'train.devices': ['/tpu:0']; allowed: null (every local GPU)",
        ),
        (
            ["train.strategy=mirrored", "train.devices=[/gpu:0,/gpu:0]"],
            "'train.devices': ['/gpu:0', '/gpu:0']; allowed",
        ),
        (
            ["train.strategy=mirrored", "train.steps_per_execution=5", "train.log_every=100", "train.backup_every=500"],
            "'train.steps_per_execution': 5; allowed: 1 under train.strategy=mirrored",
        ),
        (
            ["train.strategy=mirrored", "train.devices=[/cpu:0,/cpu:1,/cpu:2]", "train.batch_size=2"],
            "'train.batch_size': 2; allowed: at least one sample per replica under train.strategy=mirrored",
        ),
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
        (["metrics=[categorical_accuracy]"], "'accuracy'"),
        (["metrics=[top_k_categorical_accuracy]"], "'sparse_top_k_categorical_accuracy'"),
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
    data["optimizer"]["name"] = "adam"
    data["optimizer"]["lr"] = 0.01
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).endswith(
        "params.yaml: unknown key 'optimizer.lr' (not a field of 'optimizer'); did you mean 'optimizer.learning_rate'?"
    )


def test_params_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_params(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ConfigError, match=r"unsafe.yaml: not valid YAML"):  # safe loader: no object tags
        load_params(unsafe)


# ---------------------------------------------------------------- the Hydra command line, before Hydra


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["optimizer.lr=0.01"],
            "overrides: unknown key 'optimizer.lr' (not a field of 'optimizer'); did you mean 'optimizer.learning_rate'?",
        ),
        (
            ["optimizer=adamw"],
            "overrides: optimizer=adamw: no such choice in group 'optimizer'; allowed: adam, rmsprop, sgd; did you mean 'adam'?",
        ),
        (["-m", "optimizer=sgd,adamw"], "optimizer=adamw: no such choice in group 'optimizer'"),
        (["datset=mnist"], "overrides: unknown key 'datset'; did you mean 'dataset'?"),
        (["optimizer.momentum=0.9"], "unknown key 'optimizer.momentum'"),  # adam has no momentum
        (["train.batch_size=0"], "overrides: bad value for 'train.batch_size': 0; allowed: an integer >= 1"),
        (["train.epochs=[1"], "overrides: "),  # a parse error, in Hydra's words
    ],
)
def test_command_line_errors_name_the_key_and_suggest(argv, message):
    with pytest.raises(ConfigError) as err:
        prepare_argv(argv)
    assert message in str(err.value)


def test_command_line_accepts_what_the_config_knows():
    check(["optimizer=sgd", "optimizer.momentum=0.9", "train.subset=100", "hydra.job.chdir=false"], multirun=False)
    check(["optimizer=sgd,adam", "optimizer.learning_rate=0.1,0.01", "hydra/launcher=joblib"], multirun=True)
    # A sweep's groups and keys are checked here; each job's values by the sweep callback before any runs.
    check(["train.batch_size=0,32"], multirun=True)


def test_credentials_on_the_command_line_become_environment_references():
    env: dict[str, str] = {}
    from pipeline.core import redact

    out = redact.externalize("tracking.uri=postgresql://u:pa55word@h/db,sqlite:///x.db", env)
    (name,) = env
    assert env[name] == "pa55word" and name.startswith("PIPELINE_SECRET_")
    assert out == f"tracking.uri=postgresql://u:${{oc.env:{name}}}@h/db,sqlite:///x.db"
    assert redact.externalize(out, env) == out  # idempotent
    assert redact.redact(out) == "tracking.uri=postgresql://***@h/db,sqlite:///x.db"


# ---------------------------------------------------------------- one edit per optimizer


def test_an_optimizer_is_one_dataclass_and_one_yaml(tmp_path, monkeypatch):
    """A new optimizer needs its schema (a decorated dataclass) and conf/optimizer/<name>.yaml, nothing else
    (that Keras builds it from them: tests/unit/test_model.py)."""
    import shutil
    from dataclasses import dataclass, field

    from pipeline.config import OPTIMIZERS, OptimizerConfig, optimizer
    from pipeline.config.schema import FRACTION

    monkeypatch.setitem(OPTIMIZERS, "nadam", OPTIMIZERS["adam"])  # restored after the test

    @optimizer("nadam", "Nadam")
    @dataclass
    class NadamConfig(OptimizerConfig):
        beta_1: float = field(metadata=FRACTION)

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "optimizer" / "nadam.yaml").write_text("name: nadam\nlearning_rate: 0.002\nbeta_1: 0.9\n")
    cfg = validate(compose(["optimizer=nadam"], conf_dir=conf))
    assert type(cfg.optimizer) is NadamConfig and cfg.optimizer.keras_class == "Nadam"
    with pytest.raises(ConfigError, match=r"'optimizer.beta_1': 1.5; allowed: a number in"):
        validate(compose(["optimizer=nadam", "optimizer.beta_1=1.5"], conf_dir=conf))


def test_the_schema_holds_no_defaults_and_a_missing_key_is_named(tmp_path):
    """Every default lives once, in conf/: no schema field has one, and params.yaml without a key is refused
    with the key's name rather than filled in from the code."""
    import dataclasses

    from pipeline.config import schema

    classes = [c for c in vars(schema).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(classes) >= 10
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (cls, f.name)
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    del data["train"]["log_every"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"missing key 'train.log_every'"):
        load_params(tmp_path / "params.yaml")


def test_the_fast_profile_inherits_the_default_and_sets_only_what_differs():
    text = (ROOT / "conf" / "train" / "fast.yaml").read_text()
    own = {k: v for k, v in yaml.safe_load(text).items() if k != "defaults"}
    default, fast = compose().train, compose(["train=fast"]).train
    assert yaml.safe_load(text)["defaults"][0] == "default"
    assert set(fast) == set(default) and own and all(fast[k] == v != default[k] for k, v in own.items())
    assert {k for k in fast if fast[k] != default[k]} == set(own)


def test_loss_is_not_a_key_and_verbosity_and_precision_are_enumerations():
    with pytest.raises(ConfigError, match=r"unknown key 'loss'.*sparse_categorical_crossentropy"):
        validate({**compose_dict(), "loss": "sparse_categorical_crossentropy"})
    with pytest.raises(ConfigError, match=r"'train.verbose': '0'"):
        validate(compose(["train.verbose='0'"]))
    cfg = validate(compose(["train.verbose=line", "train.precision=mixed_bfloat16"]))
    assert cfg.train.verbose == "line" and cfg.train.precision == "mixed_bfloat16"


def compose_dict() -> dict:
    return OmegaConf.to_container(compose())  # type: ignore[return-value]


def test_clean_removes_every_declared_output_and_keeps_the_store(tmp_path, monkeypatch):
    from pipeline.config import clean, write_params

    monkeypatch.chdir(tmp_path)
    write_params("params.yaml")
    for path in ("data/raw/x", "data/processed/train.npz", "models/model.keras", "reports/metrics.json",
                 ".cache/backup/a/b", "outputs/2026/x", "multirun/2026/y", "mlflow.db", "mlruns/1/x"):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    removed = clean()
    assert {"data/raw", "data/processed", "models/model.keras", "reports/metrics.json", "outputs"} <= set(removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".cache",
        "data",
        "mlflow.db",
        "mlruns",
        "models",
        "params.yaml",
        "reports",
    ]
    assert not any((tmp_path / "data").iterdir()) and not (tmp_path / ".cache" / "backup").exists()


def test_choices_from_hydras_search_path_are_known(tmp_path):
    """A group option in a folder added with hydra.searchpath is a valid choice, like Hydra itself finds it."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text((ROOT / "conf" / "dataset" / "mnist.yaml").read_text())
    check([f"hydra.searchpath=[file://{tmp_path}]", "dataset=mine", "dataset.retries=2"], multirun=False)
    with pytest.raises(ConfigError, match="no such choice in group 'dataset'"):
        check(["dataset=mine"], multirun=False)
