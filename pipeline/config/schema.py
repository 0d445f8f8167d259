"""The one configuration schema: every key's type and its allowed values, and no defaults.

Consumes nothing. Produces the dataclasses that :func:`pipeline.config.validate` fills from a composed config.
Every default lives in ``conf/*.yaml``, with a comment saying what the key does; a field here has a type and,
with :func:`checked`, a rule, and nothing else. A key that ``conf/`` does not set is an error that names it
(``missing key 'train.epochs'``), never a silent default from the code.

Adding a key is a field here (type and rule) plus its line in ``conf/``; adding an optimizer is one decorated
dataclass (:func:`optimizer`) plus ``conf/optimizer/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

#: conf/: every default (the schema's values), and each model's arguments (conf/model/<name>.yaml).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def rule(*, ok: Callable[[Any], bool], allowed: str, each: bool = False) -> Rule:
    """A field's rule (``field(metadata=rule(...))``, no default: ``conf/`` sets it): its value must satisfy
    ``ok`` (each item of a list, with ``each``); :func:`pipeline.config.validate.check_fields` applies it."""
    return Rule(ok=ok, allowed=allowed, each=each)


class Rule(TypedDict, total=False):
    ok: Callable[[Any], bool]
    allowed: str
    each: bool


AT_LEAST_1 = Rule(ok=lambda v: v >= 1, allowed="an integer >= 1")
POSITIVE = Rule(ok=lambda v: v > 0, allowed="a number > 0")
FRACTION = Rule(ok=lambda v: 0.0 <= v < 1.0, allowed="a number in [0, 1)")
SPLITS_FILES = ("train_images", "train_labels", "test_images", "test_labels")


class Precision(enum.StrEnum):
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"  # CPUs with AVX512_BF16 or AMX
    mixed_float16 = "mixed_float16"  # GPUs
    auto = "auto"  # mixed_float16 on a GPU, mixed_bfloat16 on a CPU with AVX512_BF16/AMX, else float32


class LRSchedule(enum.StrEnum):
    """How the learning rate moves over a fit (``train.lr_schedule``): Keras' own schedules, so a saved model
    loads anywhere without this package."""

    constant = "constant"  # optimizer.learning_rate x train.lr_scale throughout
    cosine = "cosine"  # a linear warm-up from 0 over train.warmup of the steps, then a cosine decay to 0


class Strategy(enum.StrEnum):
    """tf.distribute strategies: one device (TensorFlow's default), or MirroredStrategy over the local GPUs or
    ``train.devices`` (one machine; see docs/scaling_out.md for several)."""

    default = "default"
    mirrored = "mirrored"


class Verbosity(enum.StrEnum):
    """What Keras' fit prints: ``auto`` is a progress bar on a terminal and a line per epoch otherwise."""

    auto = "auto"
    silent = "silent"
    bar = "bar"
    line = "line"


class Metric(enum.StrEnum):
    """Keras metrics that are right for integer labels. Adding one is a member here; Keras logs each under
    this name (``val_`` + it on the validation split)."""

    accuracy = "accuracy"
    sparse_categorical_accuracy = "sparse_categorical_accuracy"
    sparse_top_k_categorical_accuracy = "sparse_top_k_categorical_accuracy"


# The seed's trap: these expect one-hot labels and silently measure nonsense on integer labels.
ONE_HOT_ONLY = {
    "categorical_crossentropy": "sparse_categorical_crossentropy",
    "categorical_accuracy": "accuracy",
    "top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy",
}


def _is_sha256(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())


@dataclass
class FileSpec:
    file: str  # name of the gzip file on a mirror
    sha256: str = field(
        metadata=rule(  # SHA-256 of the decompressed content
            ok=lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower()), allowed="64 hex digits"
        )
    )
    size: int = field(metadata=rule(ok=lambda v: v > 0, allowed="an integer > 0"))  # bytes of the decompressed content


class DataFormat(enum.StrEnum):
    idx = "idx"  # MNIST's format: four gzipped IDX files on mirrors (files, mirrors)
    folder = "folder"  # one subfolder of images per class (source, a folder or an archive's URL)


class Preparation(enum.StrEnum):
    """How predict and serve prepare a person's image for the model."""

    digit = "digit"  # a photographed handwritten digit, as MNIST was made (pipeline.data.imageprep)
    image = "image"  # resized and scaled as in training (the dataset's image_size and channels)


@dataclass
class DatasetConfig:
    name: str
    format: DataFormat
    mirrors: list[str]  # idx: base URLs or folders, tried after $DATA_MIRROR
    files: dict[str, FileSpec] = field(
        metadata=rule(
            ok=lambda v: not v or set(v) == set(SPLITS_FILES), allowed="{} or exactly " + ", ".join(SPLITS_FILES)
        )
    )
    source: str | None  # folder: a local folder, or the URL of a .tar.gz / .zip archive
    # folder with a URL: the archive's SHA-256 (verified by the download stage)
    sha256: str | None = field(metadata=rule(ok=lambda v: v is None or _is_sha256(v), allowed="null or 64 hex digits"))
    train_dir: str | None  # folder: the subfolder of source holding the training split (null: source itself)
    test_dir: str | None  # folder: the subfolder holding the test split (null: a seeded, stratified split)
    test_fraction: float = field(metadata=rule(ok=lambda v: 0.0 <= v < 1.0, allowed="a number in [0, 1)"))
    split_seed: int = field(metadata=rule(ok=lambda v: v >= 0, allowed="an integer >= 0"))
    image_size: list[int] = field(
        metadata=rule(ok=lambda v: len(v) == 2 and all(s >= 1 for s in v), allowed="[height, width], each >= 1")
    )
    channels: int = field(metadata=rule(ok=lambda v: v in (1, 3), allowed="1 (grayscale) or 3 (RGB)"))
    num_classes: int = field(metadata=rule(ok=lambda v: v >= 2, allowed="an integer >= 2"))
    classes: list[str]  # names, by label; a folder dataset's are its class folders' names, sorted
    prepare: Preparation
    timeout: float = field(metadata=rule(ok=lambda v: v > 0, allowed="seconds > 0"))
    retries: int = field(metadata=AT_LEAST_1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What the model takes: (height, width, channels)."""
        return self.image_size[0], self.image_size[1], self.channels

    def content_hash(self) -> str:
        """Names the data, whichever mirror served it: SHA-256 over the verified SHA-256s of the IDX files, the
        archive's SHA-256, or a local folder's files (their paths and contents)."""
        if self.format is DataFormat.idx:
            joined = "".join(f"{k}:{self.files[k].sha256};" for k in sorted(self.files))
        elif self.sha256:
            joined = f"archive:{self.sha256.lower()}"
        else:
            # The one look at the disk a config makes: a local folder's files, hashed once per config object
            # (the cache key, run tags and dataset inputs all ask for it).
            if "_folder_digest" not in self.__dict__:
                from pipeline.core.files import tree_digest

                self.__dict__["_folder_digest"] = tree_digest(self.source or "")
            joined = f"folder:{self.__dict__['_folder_digest']}"
        return hashlib.sha256(joined.encode()).hexdigest()


@dataclass
class ModelConfig:
    """The network: a builder registered under ``name`` (pipeline.model.architectures) and its keyword arguments.

    ``conf/model/<name>.yaml`` is the builder's schema and its defaults at once: a config's ``model`` section must
    hold exactly that file's keys, each of the same type (:func:`pipeline.config.validate.validate_model`); the
    builder checks their ranges. In params and MLflow the arguments read flat (``model.filters``).
    """

    name: str
    params: dict[str, Any]


@dataclass
class OptimizerConfig:
    """Base of every optimizer's schema. Each subclass is one Keras optimizer: its fields are the keyword
    arguments of that Keras class, under Keras' names; ``conf/optimizer/<name>.yaml`` holds their values."""

    keras_class: ClassVar[str]
    name: str
    learning_rate: float = field(metadata=POSITIVE)


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
    momentum: float = field(metadata=FRACTION)
    nesterov: bool = field()


@optimizer("rmsprop", "RMSprop")
@dataclass
class RMSpropConfig(OptimizerConfig):
    rho: float = field(metadata=FRACTION)
    momentum: float = field(metadata=FRACTION)
    epsilon: float = field(metadata=POSITIVE)
    centered: bool = field()


@optimizer("adam", "Adam")
@dataclass
class AdamConfig(OptimizerConfig):
    beta_1: float = field(metadata=FRACTION)
    beta_2: float = field(metadata=FRACTION)
    epsilon: float = field(metadata=POSITIVE)
    amsgrad: bool = field()


def _device_names(v: list[str] | None) -> bool:
    return v is None or (len(v) >= 1 and len(set(v)) == len(v) and all(_is_device(d) for d in v))


def _is_device(name: str) -> bool:
    kind, _, index = name.lower().removeprefix("/device:").removeprefix("/").partition(":")
    return kind in ("cpu", "gpu") and index.isdigit()


@dataclass
class TrainConfig:
    epochs: int = field(metadata=AT_LEAST_1)
    batch_size: int = field(metadata=AT_LEAST_1)
    shuffle: bool = field()
    subset: int | None = field(
        metadata=rule(ok=lambda v: v is None or v >= 1, allowed="null (all samples) or an integer >= 1")
    )
    validation_split: float = field(metadata=FRACTION)
    lr_scale: float = field(metadata=POSITIVE)
    steps_per_epoch: int | None = field(
        metadata=rule(ok=lambda v: v is None or v >= 1, allowed="null (one pass over the data) or an integer >= 1")
    )
    lr_schedule: LRSchedule
    warmup: float = field(metadata=FRACTION)
    precision: Precision
    deterministic: bool = field()
    fast_kernels: bool = field()
    backup_every: int = field(metadata=AT_LEAST_1)
    # Any: OmegaConf 2.3 has no Union, and the value is ``auto`` or an integer (pipeline.model.fit resolves auto).
    log_every: Any = field(
        metadata=rule(ok=lambda v: v == "auto" or (type(v) is int and v >= 1), allowed="auto or an integer >= 1")
    )
    steps_per_execution: int = field(metadata=AT_LEAST_1)
    verbose: Verbosity
    strategy: Strategy
    devices: list[str] | None = field(
        metadata=rule(
            ok=_device_names, allowed="null (every local GPU) or a list of distinct devices like /gpu:0, /cpu:1"
        )
    )


@dataclass
class PathsConfig:
    raw_dir: str
    processed_dir: str
    model: str
    run_info: str
    epochs: str
    history: str
    metrics: str
    eval_info: str
    registry: str
    steps: str
    confusion: str
    per_class: str
    backup_dir: str
    data_cache: str


#: The paths a job writes (the rest are shared data and caches): the Hydra app moves these into each job's
#: output folder, the tests into their tmp_path. A new stage's output path is added here and in conf/.
JOB_OUTPUTS = ("model", "run_info", "eval_info", "registry", "steps", "history", "metrics", "confusion", "per_class")


@dataclass
class TrackingConfig:
    uri: str
    experiment: str
    run_name: str | None
    log_model: bool


@dataclass
class RegistryConfig:
    enabled: bool
    name: str
    alias: str
    require_significance: bool
    alpha: float = field(metadata=rule(ok=lambda v: 0.0 < v < 1.0, allowed="a number in (0, 1)"))
    export: list[str] = field(
        metadata=rule(
            ok=lambda v: len(set(v)) == len(v) and set(v) <= {"tflite", "onnx"},
            allowed="[], [tflite], [onnx] or [tflite, onnx]",
        )
    )


@dataclass
class Config:
    dataset: DatasetConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    seed: int = field(metadata=rule(ok=lambda v: v >= 0, allowed="an integer >= 0"))
    metrics: list[Metric] = field(metadata=rule(ok=lambda v: len(v) >= 1, allowed="at least one metric"))
    paths: PathsConfig = field()
    tracking: TrackingConfig = field()
    registry: RegistryConfig = field()

    @property
    def metric(self) -> Metric:
        """The headline metric: the first of ``metrics``, as Keras names it in its logs (``val_`` + it with a
        validation split). What the step curve, the epoch log and a tuner's objective read."""
        return self.metrics[0]


def keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key the schema knows under ``cls`` (for "did you mean"), optimizers' fields included."""
    import typing

    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, kind = prefix + f.name, hints[f.name]
        out.append(key)
        if kind is OptimizerConfig:
            out += sorted({k for sub in OPTIMIZERS.values() for k in keys(sub, key + ".")})
        elif dataclasses.is_dataclass(kind):
            out += keys(kind, key + ".")  # type: ignore[arg-type]
    return out
