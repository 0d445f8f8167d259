"""The one configuration schema, and the ways a config reaches a stage.

Consumes: the Hydra tree in ``conf/`` (composed with overrides) or its composition ``params.yaml``
(what DVC stages read). Produces: a validated, typed :class:`Config` (dataclasses), or a
:class:`ConfigError` naming the key, the bad value and what is allowed.

Types and unknown keys are checked by merging into the structured schema (OmegaConf, struct mode);
ranges and choices by :func:`_check_ranges`. Both run before any work, whichever way the config came.

Run ``python -m pipeline.config`` to rewrite ``params.yaml`` from ``conf/`` (``make params``), exactly
as DVC's Hydra integration writes it; ``python -m pipeline.config clean`` removes the outputs (``make clean``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import redact
from pipeline.errors import ConfigError, user_errors

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"


# --------------------------------------------------------------------------- schema
#
# Each field's allowed values sit next to it (``checked(...)``); :func:`_check_fields` applies them to any
# dataclass, so a new key or a new optimizer is declared in one place.


def checked(
    default: Any = dataclasses.MISSING,
    *,
    ok: Callable[[Any], bool],
    allowed: str,
    each: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field whose value must satisfy ``ok`` (each item of a list, with ``each``)."""
    meta = {"ok": ok, "allowed": allowed, "each": each}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Rule(TypedDict):
    ok: Callable[[Any], bool]
    allowed: str


def _one_of(*choices: str) -> Rule:
    return Rule(ok=lambda v: v in choices, allowed=" | ".join(choices))


AT_LEAST_1 = Rule(ok=lambda v: v >= 1, allowed="an integer >= 1")
POSITIVE = Rule(ok=lambda v: v > 0, allowed="a number > 0")
FRACTION = Rule(ok=lambda v: 0.0 <= v < 1.0, allowed="a number in [0, 1)")
SPLITS_FILES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass
class FileSpec:
    file: str  # name of the gzip file on a mirror
    sha256: str = checked(  # SHA-256 of the decompressed content
        ok=lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower()), allowed="64 hex digits"
    )
    size: int = checked(ok=lambda v: v > 0, allowed="an integer > 0")  # bytes of the decompressed content


@dataclass
class DatasetConfig:
    name: str = "mnist"
    mirrors: list[str] = field(default_factory=list)
    files: dict[str, FileSpec] = checked(
        factory=dict, ok=lambda v: set(v) == set(SPLITS_FILES), allowed="exactly " + ", ".join(SPLITS_FILES)
    )
    num_classes: int = checked(10, ok=lambda v: v >= 2, allowed="an integer >= 2")
    classes: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])  # names, by label
    timeout: float = checked(30.0, ok=lambda v: v > 0, allowed="seconds > 0")
    retries: int = checked(3, **AT_LEAST_1)

    def content_hash(self) -> str:
        """SHA-256 over the verified SHA-256s of the dataset's files: names the data, whichever mirror served it."""
        joined = "".join(f"{k}:{self.files[k].sha256};" for k in sorted(self.files))
        return hashlib.sha256(joined.encode()).hexdigest()


@dataclass
class ModelConfig:
    name: str = checked("basic_cnn", **_one_of("basic_cnn"))
    filters: list[int] = checked(
        factory=lambda: [32, 64], ok=lambda v: len(v) >= 1 and all(f >= 1 for f in v), allowed="a list of integers >= 1"
    )
    kernel_size: int = checked(3, **AT_LEAST_1)
    pool_size: int = checked(2, **AT_LEAST_1)
    conv_dropout: float = checked(0.25, **FRACTION)
    dense_units: int = checked(512, **AT_LEAST_1)
    dense_dropout: float = checked(0.5, **FRACTION)


@dataclass
class OptimizerConfig:
    """Base of every optimizer's schema. Each subclass is one Keras optimizer: its fields are the keyword
    arguments of that Keras class, under Keras' names; ``conf/optimizer/<name>.yaml`` holds their values."""

    keras_class: ClassVar[str]
    name: str = "adam"
    learning_rate: float = checked(1e-3, **POSITIVE)


#: name -> schema; filled by :func:`optimizer`.
OPTIMIZERS: dict[str, type[OptimizerConfig]] = {}


def optimizer(name: str, keras_class: str) -> Callable[[type[OptimizerConfig]], type[OptimizerConfig]]:
    """Register an optimizer schema under ``name``, built as ``keras.optimizers.<keras_class>``.

    Adding an optimizer is this decorated dataclass plus ``conf/optimizer/<name>.yaml``.
    """

    def register(cls: type[OptimizerConfig]) -> type[OptimizerConfig]:
        cls.keras_class = keras_class
        OPTIMIZERS[name] = cls
        return cls

    return register


@optimizer("sgd", "SGD")
@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = checked(0.01, **POSITIVE)
    momentum: float = checked(0.0, **FRACTION)
    nesterov: bool = False


@optimizer("rmsprop", "RMSprop")
@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    learning_rate: float = checked(1e-3, **POSITIVE)
    rho: float = checked(0.9, **FRACTION)
    momentum: float = checked(0.0, **FRACTION)
    epsilon: float = checked(1e-7, **POSITIVE)
    centered: bool = False


@optimizer("adam", "Adam")
@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    learning_rate: float = checked(1e-3, **POSITIVE)
    beta_1: float = checked(0.9, **FRACTION)
    beta_2: float = checked(0.999, **FRACTION)
    epsilon: float = checked(1e-7, **POSITIVE)
    amsgrad: bool = False


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
#: tf.distribute strategies: one device (TensorFlow's default), or MirroredStrategy over the local GPUs or
#: ``train.devices`` (one machine; see docs/scaling_out.md for several).
STRATEGIES = ("default", "mirrored")


def _device_names(v: list[str] | None) -> bool:
    return v is None or (len(v) >= 1 and len(set(v)) == len(v) and all(_is_device(d) for d in v))


def _is_device(name: str) -> bool:
    kind, _, index = name.lower().removeprefix("/device:").removeprefix("/").partition(":")
    return kind in ("cpu", "gpu") and index.isdigit()


VERBOSITY = ("auto", "0", "1", "2")
LOSSES = ("sparse_categorical_crossentropy",)
#: Keras metrics that are right for integer labels. Adding one is adding its Keras name here.
METRICS = ("accuracy", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy")
# The seed's trap: these expect one-hot labels and silently measure nonsense on integer labels.
ONE_HOT_ONLY = {
    "categorical_crossentropy": "sparse_categorical_crossentropy",
    "categorical_accuracy": "accuracy",
    "top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy",
}


@dataclass
class TrainConfig:
    epochs: int = checked(1, **AT_LEAST_1)
    batch_size: int = checked(32, **AT_LEAST_1)
    shuffle: bool = True
    subset: int | None = checked(
        None, ok=lambda v: v is None or v >= 1, allowed="null (all samples) or an integer >= 1"
    )
    validation_split: float = checked(0.0, **FRACTION)
    lr_scale: float = checked(1.0, **POSITIVE)
    precision: str = checked("float32", **_one_of(*PRECISIONS))
    deterministic: bool = True
    fast_kernels: bool = True
    backup_every: int = checked(500, **AT_LEAST_1)
    log_every: int = checked(100, **AT_LEAST_1)
    steps_per_execution: int = checked(1, **AT_LEAST_1)
    verbose: str = checked("auto", **_one_of(*VERBOSITY))
    strategy: str = checked("default", **_one_of(*STRATEGIES))
    devices: list[str] | None = checked(
        None, ok=_device_names, allowed="null (every local GPU) or a list of distinct devices like /gpu:0, /cpu:1"
    )


@dataclass
class PathsConfig:
    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    model: str = "models/model.keras"
    run_info: str = "models/mlflow_run.json"
    history: str = "reports/history.csv"
    metrics: str = "reports/metrics.json"
    eval_info: str = "reports/mlflow_eval.json"
    registry: str = "reports/registry.json"
    steps: str = "reports/train_steps.csv"
    confusion: str = "reports/confusion.csv"
    per_class: str = "reports/per_class.csv"
    backup_dir: str = ".cache/backup"
    data_cache: str = ".cache/data"


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "mnist-cnn"
    run_name: str | None = None
    log_model: bool = True


@dataclass
class RegistryConfig:
    enabled: bool = True
    name: str = "mnist-cnn"
    alias: str = "champion"
    require_significance: bool = True
    alpha: float = checked(0.05, ok=lambda v: 0.0 < v < 1.0, allowed="a number in (0, 1)")


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=AdamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = checked(42, ok=lambda v: v >= 0, allowed="an integer >= 0")
    loss: str = checked("sparse_categorical_crossentropy", **_one_of(*LOSSES))
    metrics: list[str] = checked(
        factory=lambda: ["accuracy"], ok=lambda v: v in METRICS, allowed=" | ".join(METRICS), each=True
    )
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)


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

    ``source`` names where the config came from (a file, "overrides") in error messages. Credentials found
    in the config are registered with :mod:`pipeline.redact`, so no later output shows them.
    """
    data = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    data.pop("hydra", None)
    redact.register_tree(data)
    opt = data.get("optimizer")
    opt_name = opt.get("name") if isinstance(opt, dict) else None
    if opt_name not in OPTIMIZERS:
        raise ConfigError(
            f"{source}: optimizer.name={opt_name!r} is not a known optimizer; choose one of {', '.join(OPTIMIZERS)}"
            + suggest(str(opt_name), list(OPTIMIZERS))
        )
    _check_one_hot_trap(data, source)
    schema = OmegaConf.structured(Config(optimizer=OPTIMIZERS[opt_name]()))
    try:
        merged = OmegaConf.merge(schema, data)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc, schema)}") from None
    _check_fields(cfg, "", source)
    if len(cfg.dataset.classes) != cfg.dataset.num_classes:
        raise ConfigError(
            f"{source}: bad value for 'dataset.classes': {len(cfg.dataset.classes)} names; allowed: one name per "
            f"class, dataset.num_classes={cfg.dataset.num_classes}"
        )
    t = cfg.train
    _check_strategy(t, source)
    for key in ("log_every", "backup_every"):
        # Keras calls batch callbacks once per execution: a curve point or a backup between two is never seen.
        if getattr(t, key) % t.steps_per_execution:
            raise ConfigError(
                f"{source}: bad value for 'train.{key}': {getattr(t, key)}; allowed: a multiple of "
                f"train.steps_per_execution={t.steps_per_execution}"
            )
    return cfg


def _check_strategy(t: TrainConfig, source: str) -> None:
    """Combinations TensorFlow's MirroredStrategy does not support with the pinned Keras and TensorFlow."""
    if t.devices is not None and t.strategy == "default":
        raise ConfigError(
            f"{source}: bad value for 'train.devices': {t.devices}; allowed: null with train.strategy=default "
            "(one device); set train.strategy=mirrored to train on several"
        )
    if t.strategy == "mirrored" and t.steps_per_execution > 1:
        # Keras 3.15 on TensorFlow 2.21: fit's multi-step loop under MirroredStrategy fails at its first step
        # ("You must feed a value for placeholder tensor 'while/body/.../Placeholder_1'").
        raise ConfigError(
            f"{source}: bad value for 'train.steps_per_execution': {t.steps_per_execution}; allowed: 1 under "
            "train.strategy=mirrored (Keras' multi-step loop fails under MirroredStrategy with the pinned versions)"
        )
    if t.strategy == "mirrored" and t.devices is not None and t.batch_size < len(t.devices):
        raise ConfigError(
            f"{source}: bad value for 'train.batch_size': {t.batch_size}; allowed: at least one sample per replica "
            f"under train.strategy=mirrored (the global batch; {len(t.devices)} devices)"
        )


def suggest(word: str, choices: list[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``choices`` (dotted keys or plain names), or nothing.

    Keys are compared level by level: an abbreviation of a sibling (``lr`` for ``learning_rate``), then a
    sibling with a close spelling (``epocs``), then any key with a close spelling.
    """
    import difflib

    parent, _, leaf = word.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in choices if c.rpartition(".")[0] == parent}
    for name, choice in siblings.items():
        words = name.split("_")
        if len(words) > 1 and leaf == "".join(w[:1] for w in words):
            return f"; did you mean '{choice}'?"
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{siblings[close[0]]}'?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _describe(exc: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or (msg.startswith("Key '") and "not in" in msg):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        known = list(flatten(OmegaConf.to_container(schema)))
        return f"unknown key '{key}'" + (f" (not a field of '{parent}')" if parent else "") + suggest(key, known)
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


def _check_fields(obj: Any, prefix: str, source: str) -> None:
    """Apply every field's ``checked`` rule, depth first, in declaration order."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        ok = f.metadata.get("ok")
        if ok is not None:
            items = list(enumerate(value)) if f.metadata["each"] else [(None, value)]
            for i, item in items:
                if not ok(item):
                    shown = key if i is None else f"{key}[{i}]"
                    raise ConfigError(f"{source}: bad value for '{shown}': {item!r}; allowed: {f.metadata['allowed']}")
        children = value.items() if isinstance(value, dict) else [(None, value)]
        for name, child in children:
            if dataclasses.is_dataclass(child):
                _check_fields(child, f"{key}.{name}." if name is not None else f"{key}.", source)


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


#: Folders Hydra's runs write into (conf/config.yaml: hydra.run.dir, hydra.sweep.dir).
HYDRA_OUTPUT_ROOTS = ("outputs", "multirun")


def clean(path: Path | str = PARAMS_FILE) -> list[str]:
    """Remove every output the pipeline writes (``paths.*`` of params.yaml and Hydra's run folders); the
    MLflow store stays. Returns what was removed."""
    from pipeline.files import remove

    targets = [*to_dict(load_params(path))["paths"].values(), *HYDRA_OUTPUT_ROOTS]
    removed = [t for t in targets if os.path.lexists(t)]
    remove(*removed)
    return removed


def main() -> None:
    """``python -m pipeline.config [overrides]`` writes params.yaml; ``python -m pipeline.config clean``
    removes the pipeline's outputs."""
    with user_errors():
        if sys.argv[1:] == ["clean"]:
            print("removed: " + (" ".join(clean()) or "nothing"))
            return
        write_params(PARAMS_FILE, sys.argv[1:])
    print(f"wrote {PARAMS_FILE} from {os.path.relpath(CONF_DIR)}/")


if __name__ == "__main__":
    main()
