"""The one configuration schema, and the ways a config reaches a stage.

Consumes: the Hydra tree in ``conf/`` (composed with overrides) or its composition ``params.yaml``
(what DVC stages read). Produces: a validated, typed :class:`Config` (dataclasses), or a
:class:`ConfigError` naming the key, the bad value and what is allowed.

Types and unknown keys are checked by merging into the structured schema (OmegaConf, struct mode);
ranges and choices by :func:`_check_ranges`. Both run before any work, whichever way the config came.

Run ``python -m pipeline.config`` to rewrite ``params.yaml`` from ``conf/`` (``make params``), exactly
as DVC's Hydra integration writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"


# --------------------------------------------------------------------------- schema


@dataclass
class FileSpec:
    file: str  # name of the gzip file on a mirror
    sha256: str  # SHA-256 of the decompressed content
    size: int  # bytes of the decompressed content


@dataclass
class DatasetConfig:
    name: str = "mnist"
    mirrors: list[str] = field(default_factory=list)
    files: dict[str, FileSpec] = field(default_factory=dict)
    num_classes: int = 10
    timeout: float = 30.0
    retries: int = 3


@dataclass
class ModelConfig:
    name: str = "basic_cnn"
    filters: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    pool_size: int = 2
    conv_dropout: float = 0.25
    dense_units: int = 512
    dense_dropout: float = 0.5


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    learning_rate: float = 1e-3
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7
    centered: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False


OPTIMIZERS: dict[str, type[OptimizerConfig]] = {"sgd": SGDConfig, "rmsprop": RMSpropConfig, "adam": AdamConfig}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
VERBOSITY = ("auto", "0", "1", "2")
LOSSES = ("sparse_categorical_crossentropy",)
METRICS = ("accuracy", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy")
# The seed's trap: these expect one-hot labels and silently measure nonsense on integer labels.
ONE_HOT_ONLY = {
    "categorical_crossentropy": "sparse_categorical_crossentropy",
    "categorical_accuracy": "accuracy",
    "top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy",
}


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    shuffle: bool = True
    subset: Optional[int] = None
    validation_split: float = 0.0
    lr_scale: float = 1.0
    precision: str = "float32"
    backup_every: int = 500
    verbose: str = "auto"


@dataclass
class PathsConfig:
    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    model: str = "models/model.keras"
    run_info: str = "models/mlflow_run.json"
    history: str = "reports/history.csv"
    metrics: str = "reports/metrics.json"
    confusion: str = "reports/confusion.csv"
    per_class: str = "reports/per_class.csv"
    backup_dir: str = ".cache/backup"


@dataclass
class TrackingConfig:
    uri: Optional[str] = None
    experiment: str = "mnist-cnn"
    run_name: Optional[str] = None
    log_model: bool = True


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=AdamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42
    loss: str = "sparse_categorical_crossentropy"
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _register() -> None:
    # The same dataclasses as Hydra structured configs, for tools that look them up by name. They are
    # not in conf/'s defaults list: DVC composes conf/ in its own process, where this module is absent.
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, node in OPTIMIZERS.items():
        cs.store(group="schema/optimizer", name=name, node=node)  # not in `optimizer`: no extra choices


_register()


# --------------------------------------------------------------------------- validation


def validate(raw: Any, source: str = "config") -> Config:
    """Validate a composed config (DictConfig or plain dict) against the schema; return it typed.

    ``source`` names where the config came from (a file, "overrides") in error messages.
    """
    data = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    data.pop("hydra", None)
    opt = data.get("optimizer")
    opt_name = opt.get("name") if isinstance(opt, dict) else None
    if opt_name not in OPTIMIZERS:
        raise ConfigError(
            f"{source}: optimizer.name={opt_name!r} is not a known optimizer; choose one of {', '.join(OPTIMIZERS)}"
        )
    _check_one_hot_trap(data, source)
    schema = OmegaConf.structured(Config(optimizer=OPTIMIZERS[opt_name]()))
    try:
        merged = OmegaConf.merge(schema, data)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    _check_ranges(cfg, source)
    return cfg


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or msg.startswith("Key '") and "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return f"unknown key '{key}'" + (f" (not a field of '{parent}')" if parent else "")
    value = getattr(exc, "value", None)
    return f"bad value for '{key}': {value!r} ({msg})"


def _check_one_hot_trap(data: dict, source: str) -> None:
    names = [("loss", data.get("loss"))] + [("metrics", m) for m in (data.get("metrics") or [])]
    for key, name in names:
        if isinstance(name, str) and name.lower() in ONE_HOT_ONLY:
            raise ConfigError(
                f"{source}: {key}={name!r} expects one-hot labels, but this dataset's labels are integers; "
                f"Keras would report a meaningless number (the seed printed 0.0992 'accuracy' for a 98.8% "
                f"model). Use {ONE_HOT_ONLY[name.lower()]!r} instead."
            )


def _check_ranges(cfg: Config, source: str) -> None:
    def need(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: bad value for '{key}': {value!r}; allowed: {allowed}")

    t, m, o = cfg.train, cfg.model, cfg.optimizer
    need(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    need(t.subset is None or t.subset >= 1, "train.subset", t.subset, "null (all samples) or an integer >= 1")
    need(0.0 <= t.validation_split < 1.0, "train.validation_split", t.validation_split, "a number in [0, 1)")
    need(t.lr_scale > 0, "train.lr_scale", t.lr_scale, "a number > 0")
    need(t.precision in PRECISIONS, "train.precision", t.precision, " | ".join(PRECISIONS))
    need(t.backup_every >= 1, "train.backup_every", t.backup_every, "an integer >= 1")
    need(t.verbose in VERBOSITY, "train.verbose", t.verbose, " | ".join(VERBOSITY))
    need(m.name == "basic_cnn", "model.name", m.name, "basic_cnn")
    need(len(m.filters) >= 1 and all(f >= 1 for f in m.filters), "model.filters", m.filters, "a list of integers >= 1")
    for key in ("kernel_size", "pool_size", "dense_units"):
        need(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "an integer >= 1")
    for key in ("conv_dropout", "dense_dropout"):
        need(0.0 <= getattr(m, key) < 1.0, f"model.{key}", getattr(m, key), "a number in [0, 1)")
    need(o.learning_rate > 0, "optimizer.learning_rate", o.learning_rate, "a number > 0")
    for key in ("momentum", "rho", "beta_1", "beta_2"):
        if hasattr(o, key):
            need(0.0 <= getattr(o, key) < 1.0, f"optimizer.{key}", getattr(o, key), "a number in [0, 1)")
    if hasattr(o, "epsilon"):
        need(o.epsilon > 0, "optimizer.epsilon", o.epsilon, "a number > 0")
    need(cfg.loss in LOSSES, "loss", cfg.loss, " | ".join(LOSSES))
    need(len(cfg.metrics) >= 1, "metrics", cfg.metrics, "a non-empty list")
    for i, name in enumerate(cfg.metrics):
        need(name in METRICS, f"metrics[{i}]", name, " | ".join(METRICS))
    d = cfg.dataset
    need(d.timeout > 0, "dataset.timeout", d.timeout, "seconds > 0")
    need(d.retries >= 1, "dataset.retries", d.retries, "an integer >= 1")
    need(d.num_classes >= 2, "dataset.num_classes", d.num_classes, "an integer >= 2")
    need(
        set(d.files) == {"train_images", "train_labels", "test_images", "test_labels"},
        "dataset.files",
        sorted(d.files),
        "exactly train_images, train_labels, test_images, test_labels",
    )
    for key, spec in d.files.items():
        ok = len(spec.sha256) == 64 and all(c in "0123456789abcdef" for c in spec.sha256.lower())
        need(ok, f"dataset.files.{key}.sha256", spec.sha256, "64 hex digits")
        need(spec.size > 0, f"dataset.files.{key}.size", spec.size, "an integer > 0")
    need(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")


# --------------------------------------------------------------------------- loading


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | str = CONF_DIR) -> DictConfig:
    """Compose ``conf/`` with Hydra overrides, as ``dvc exp run -S`` and the tests do."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def load_params(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate ``params.yaml`` (safe YAML loader): what every DVC stage starts with."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameters file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(data, source=str(path))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``optimizer.name``); lists stay values."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = data
    return out


def config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    """Stable short hash of some sections of the config (names the resumable-training folder)."""
    data = {s: to_dict(cfg)[s] for s in sections}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_params(path: Path | str = PARAMS_FILE, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Write the composition of conf/ to params.yaml, byte for byte as DVC's Hydra integration does."""
    text = OmegaConf.to_yaml(compose(overrides))
    Path(path).write_text(text, encoding="utf-8")
    return text


def main() -> None:
    write_params(PARAMS_FILE, sys.argv[1:])
    print(f"wrote {PARAMS_FILE} from {os.path.relpath(CONF_DIR)}/")


if __name__ == "__main__":
    main()
