"""The networks, each a builder registered by name: ``model.name`` in ``conf/model/<name>.yaml`` picks one.

Consumes: the ``model`` config, the number of classes and the input shape. Produces: an uncompiled Keras model.
The seed's ``Basic_CNN`` (1,676,266 parameters with the defaults) is ``basic_cnn``.

Adding a model: a function ``(cfg: ModelConfig, num_classes, input_shape) -> keras.Model`` decorated with
``@architecture("<name>")`` here, and ``conf/model/<name>.yaml`` with ``name: <name>`` and its keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pipeline.config import ModelConfig, OptimizerConfig
from pipeline.core.errors import ConfigError
from pipeline.model.runtime import import_tensorflow

import_tensorflow()  # before Keras: its start-up notices once

import keras  # noqa: E402
from keras import layers  # noqa: E402

SEED_PARAMETERS = 1_676_266
Builder = Callable[[ModelConfig, int, tuple[int, ...]], keras.Model]
#: name -> builder; filled by :func:`architecture`.
ARCHITECTURES: dict[str, Builder] = {}


def architecture(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return register


def build_model(cfg: ModelConfig, num_classes: int = 10, input_shape: tuple[int, ...] = (28, 28, 1)) -> keras.Model:
    """The network ``cfg.name`` names, with a softmax over ``num_classes``."""
    if cfg.name not in ARCHITECTURES:
        raise ConfigError(f"model.name={cfg.name!r}: no such architecture; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.name](cfg, num_classes, input_shape)


@architecture("basic_cnn")
def basic_cnn(cfg: ModelConfig, num_classes: int, input_shape: tuple[int, ...]) -> keras.Model:
    """Two (per ``filters``) blocks of [Conv-ReLU, Conv-ReLU, MaxPool, Dropout], then the dense head."""
    inputs = layers.Input(input_shape)
    net = inputs
    for filters in cfg.filters:
        for _ in range(2):
            net = layers.Conv2D(filters, cfg.kernel_size, padding="same")(net)
            net = layers.Activation("relu")(net)
        net = layers.MaxPooling2D(pool_size=cfg.pool_size)(net)
        net = layers.Dropout(cfg.conv_dropout)(net)
    net = layers.Flatten()(net)
    net = layers.Dense(cfg.dense_units)(net)
    net = layers.Activation("relu")(net)
    net = layers.Dropout(cfg.dense_dropout)(net)
    net = layers.Dense(num_classes)(net)
    # float32 probabilities even under a mixed-precision policy: a stable loss and exact argmax ties.
    outputs = layers.Activation("softmax", dtype="float32")(net)
    return keras.Model(inputs=inputs, outputs=outputs, name="Basic_CNN")


def build_optimizer(cfg: OptimizerConfig, lr_scale: float = 1.0) -> keras.optimizers.Optimizer:
    """``keras.optimizers.<cfg.keras_class>`` with the config's fields as its arguments (see config.optimizer)."""
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("name")
    kwargs["learning_rate"] = kwargs["learning_rate"] * lr_scale
    return getattr(keras.optimizers, cfg.keras_class)(**kwargs)
