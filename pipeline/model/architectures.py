"""The networks, each a builder registered by name: ``model=<name>`` picks ``conf/model/<name>.yaml``, whose
``name`` is a builder here and whose other keys are that builder's keyword arguments.

Consumes: the ``model`` config (its arguments), the number of classes and the input shape (the dataset's
``image_size`` and ``channels``). Produces: an uncompiled Keras model whose output is a float32 softmax.

- ``basic_cnn``: the seed's ``Basic_CNN`` (1,676,266 parameters with the defaults on MNIST);
- ``resnet_small``: a small residual network (He et al., 2016): a convolutional stem, stages of residual blocks
  with batch normalisation, each stage after the first halving the resolution, global average pooling.

Adding a model: a function ``(num_classes, input_shape, **arguments) -> keras.Model`` decorated with
``@architecture("<name>")`` here, and ``conf/model/<name>.yaml`` with ``name: <name>`` and the arguments' values,
each commented. The YAML is the arguments' schema (types are checked before any work); the builder checks their
ranges with :func:`require`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import ModelConfig, OptimizerConfig
from pipeline.core.errors import ConfigError
from pipeline.model.runtime import import_tensorflow

import_tensorflow()  # before Keras: its start-up notices once

import keras  # noqa: E402
from keras import layers  # noqa: E402

SEED_PARAMETERS = 1_676_266
Builder = Callable[..., keras.Model]
#: name -> builder; filled by :func:`architecture`.
ARCHITECTURES: dict[str, Builder] = {}


def architecture(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return register


def require(key: str, value: Any, ok: bool, allowed: str) -> None:
    """A builder's check of one argument: a :class:`ConfigError` naming ``model.<key>`` when not ``ok``."""
    if not ok:
        raise ConfigError(f"bad value for 'model.{key}': {value!r}; allowed: {allowed}")


def build_model(cfg: ModelConfig, num_classes: int = 10, input_shape: tuple[int, ...] = (28, 28, 1)) -> keras.Model:
    """The network ``cfg.name`` names, with a softmax over ``num_classes``."""
    if cfg.name not in ARCHITECTURES:
        raise ConfigError(f"model.name={cfg.name!r}: no such architecture; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.name](num_classes, tuple(input_shape), **cfg.params)


def _fraction(key: str, value: float) -> None:
    require(key, value, 0.0 <= value < 1.0, "a number in [0, 1)")


def _counts(key: str, value: list[int]) -> None:
    require(key, value, len(value) >= 1 and all(v >= 1 for v in value), "a list of integers >= 1")


@architecture("basic_cnn")
def basic_cnn(
    num_classes: int, input_shape: tuple[int, ...], *, filters: list[int], kernel_size: int, pool_size: int,
    conv_dropout: float, dense_units: int, dense_dropout: float,
) -> keras.Model:  # fmt: skip
    """Per entry of ``filters``, a block of [Conv-ReLU, Conv-ReLU, MaxPool, Dropout]; then the dense head."""
    _counts("filters", filters)
    for key, value in (("kernel_size", kernel_size), ("pool_size", pool_size), ("dense_units", dense_units)):
        require(key, value, value >= 1, "an integer >= 1")
    _fraction("conv_dropout", conv_dropout)
    _fraction("dense_dropout", dense_dropout)
    inputs = layers.Input(input_shape)
    net = inputs
    for n in filters:
        for _ in range(2):
            net = layers.Conv2D(n, kernel_size, padding="same")(net)
            net = layers.Activation("relu")(net)
        net = layers.MaxPooling2D(pool_size=pool_size)(net)
        net = layers.Dropout(conv_dropout)(net)
    net = layers.Flatten()(net)
    net = layers.Dense(dense_units)(net)
    net = layers.Activation("relu")(net)
    net = layers.Dropout(dense_dropout)(net)
    return keras.Model(inputs=inputs, outputs=_softmax(net, num_classes), name="Basic_CNN")


@architecture("resnet_small")
def resnet_small(
    num_classes: int, input_shape: tuple[int, ...], *, filters: list[int], blocks: int, dropout: float
) -> keras.Model:
    """A 3x3 convolutional stem of ``filters[0]``, then one stage per entry of ``filters``, each of ``blocks``
    residual blocks ([Conv-BN-ReLU, Conv-BN] + the identity, or a 1x1 projection where the shape changes, then
    ReLU); every stage after the first starts with stride 2. Global average pooling, dropout, softmax."""
    _counts("filters", filters)
    require("blocks", blocks, blocks >= 1, "an integer >= 1")
    _fraction("dropout", dropout)
    inputs = layers.Input(input_shape)
    net = layers.Conv2D(filters[0], 3, padding="same", use_bias=False)(inputs)
    net = layers.Activation("relu")(_bn()(net))
    for stage, n in enumerate(filters):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = net
            net = layers.Conv2D(n, 3, strides=stride, padding="same", use_bias=False)(net)
            net = layers.Activation("relu")(_bn()(net))
            net = _bn()(layers.Conv2D(n, 3, padding="same", use_bias=False)(net))
            if stride != 1 or shortcut.shape[-1] != n:
                shortcut = layers.Conv2D(n, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = _bn()(shortcut)
            net = layers.Activation("relu")(layers.Add()([net, shortcut]))
    net = layers.GlobalAveragePooling2D()(net)
    net = layers.Dropout(dropout)(net)
    return keras.Model(inputs=inputs, outputs=_softmax(net, num_classes), name="ResNet_small")


def _bn() -> Any:
    # Keras' default momentum (0.99) leaves the moving statistics near their start after a few hundred steps,
    # and inference then scores like chance; 0.9 settles within about 50 steps.
    return layers.BatchNormalization(momentum=0.9)


def _softmax(net: Any, num_classes: int) -> Any:
    # float32 probabilities even under a mixed-precision policy: a stable loss and exact argmax ties.
    return layers.Activation("softmax", dtype="float32")(layers.Dense(num_classes)(net))


def build_optimizer(cfg: OptimizerConfig, lr_scale: float = 1.0) -> keras.optimizers.Optimizer:
    """``keras.optimizers.<cfg.keras_class>`` with the config's fields as its arguments (see config.optimizer)."""
    import dataclasses

    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("name")
    kwargs["learning_rate"] = kwargs["learning_rate"] * lr_scale
    return getattr(keras.optimizers, cfg.keras_class)(**kwargs)
