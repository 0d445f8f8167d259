"""Every private API the project relies on, in one module, behind one switch and a version guard.

Consumes: the installed TensorFlow and Keras. Produces: four patches, each with the stock behaviour as its
fallback:

- :func:`fast_kernels` (``train.fast_kernels``): the seed's training arithmetic on TensorFlow's faster CPU
  kernels. Adam in one pass (``ResourceApplyAdam``; it reads Keras' slot variables ``_momentums`` and
  ``_velocities``), and the Dense layers' gradients through oneDNN's matmul primitive (``BatchMatMulV2``; the
  gradient function is swapped in TensorFlow's gradient registry, which has no public setter, for the
  duration of the block). The results equal the stock kernels' to float rounding (``tests/unit/test_kernels.py``
  trains the same steps both ways); AMSGrad and distribution strategies keep Keras' own update.
- :func:`lean_import`: ``import tensorflow`` without the scikit-learn and ``matplotlib.pyplot`` that Keras
  imports for ``keras.wrappers`` and ``keras.visualization`` (features the pipeline never calls): both are
  marked not importable in ``sys.modules`` for the length of the import (0.8-0.9 s of each stage's import).
- :func:`disable_op_determinism`: TensorFlow has a public ``enable_op_determinism`` and no public way back;
  in-process sweeps (``-m train=default,fast``) need it off again after a deterministic job.
- :func:`op_determinism_enabled`: whether it is on (recorded with each training).

The switch: ``PIPELINE_PATCHES=0`` in the environment turns every patch off (stock TensorFlow and Keras
everywhere; ``train.fast_kernels`` then changes nothing). The guard: outside the versions in :data:`TESTED`
each patch falls back to the stock path and logs one warning saying so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import types
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
SWITCH = "PIPELINE_PATCHES"
#: (lowest, highest) major.minor versions the patches were tested with; outside them, the stock path.
TESTED = {"tensorflow": ((2, 16), (2, 21)), "keras": ((3, 5), (3, 15))}
#: Modules Keras imports if it can, for features the pipeline does not use.
UNUSED_BY_KERAS = ("sklearn", "matplotlib.pyplot")


def _version(dist: str) -> tuple[int, int] | None:
    for name in (dist, f"{dist}-cpu"):
        try:
            major, minor = metadata.version(name).split(".")[:2]
            return int(major), int(minor)
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


@functools.cache
def allowed(patch: str) -> bool:
    """Whether ``patch`` may run: the switch is on and the installed versions are the tested ones (else one
    warning, once per patch and process)."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    for dist, (low, high) in TESTED.items():
        version = _version(dist)
        if version is None or not low <= version <= high:
            shown = "not installed" if version is None else ".".join(map(str, version))
            log.warning(
                "%s: %s %s is outside the tested %s-%s; using the stock path (pipeline/model/patches.py)",
                patch, dist, shown, ".".join(map(str, low)), ".".join(map(str, high)),
            )  # fmt: skip
            return False
    return True


# --------------------------------------------------------------------------- the import


@contextlib.contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """``import <name>`` raises ImportError inside the block, for each name not imported yet."""
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


def lean_import() -> contextlib.AbstractContextManager[None]:
    """The context to ``import tensorflow`` in: without Keras' optional imports when allowed. Keras' version is
    what matters here, and it is only known once imported, so the guard reads the installed distribution."""
    return hidden(UNUSED_BY_KERAS) if allowed("lean import") else contextlib.nullcontext()


# --------------------------------------------------------------------------- op determinism


def op_determinism_enabled() -> bool:
    from tensorflow.python.framework import config  # no public reader

    return bool(config.is_op_determinism_enabled())


def disable_op_determinism() -> bool:
    """Turn TensorFlow's op determinism off again; False (and a warning) where that is not possible."""
    if not allowed("disable op determinism"):
        log.warning("op determinism stays on in this process (no stock way to turn it off)")
        return False
    from tensorflow.python.framework import config  # no public setter

    config.disable_op_determinism()
    return True


# --------------------------------------------------------------------------- kernels


def _fused_adam_step(self: Any, gradient: Any, variable: Any, learning_rate: Any) -> None:
    import tensorflow as tf

    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle,
        m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, dtype),
        beta1=beta_1,
        beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype),
    )


def _matmul_grad(stock: Any) -> Any:
    def grad(op: Any, dy: Any) -> Any:
        if op.get_attr("transpose_a") or op.get_attr("transpose_b"):
            return stock(op, dy)
        import tensorflow as tf

        x, w = op.inputs[0], op.inputs[1]
        return (
            tf.raw_ops.BatchMatMulV2(x=dy, y=w, adj_y=True),  # dy @ W^T
            tf.raw_ops.BatchMatMulV2(x=x, y=dy, adj_x=True),  # x^T @ dy
        )

    return grad


def fuse_adam(optimizer: keras.optimizers.Optimizer) -> bool:
    """Give a plain Keras Adam (no AMSGrad) the one-pass update; True when it did."""
    import keras

    if type(optimizer) is not keras.optimizers.Adam or optimizer.amsgrad:
        return False
    optimizer.update_step = types.MethodType(_fused_adam_step, optimizer)
    return True


@contextlib.contextmanager
def fast_kernels(model: keras.Model, enabled: bool = True) -> Iterator[list[str]]:
    """Within the block, ``model``'s optimizer updates in one pass and MatMul gradients use oneDNN's matmul
    primitive; yields the names of the kernels swapped in (empty when ``enabled`` is false or the patch is not
    allowed: the stock kernels)."""
    if not enabled or not allowed("fast kernels"):
        yield []
        return
    from tensorflow.python.framework import ops  # the gradient registry has no public setter

    swapped = ["ResourceApplyAdam"] if fuse_adam(model.optimizer) else []
    entry = ops._gradient_registry._registry["MatMul"]
    stock = entry["type"]
    entry["type"] = _matmul_grad(stock)
    try:
        yield [*swapped, "BatchMatMulV2 gradients"]
    finally:
        entry["type"] = stock
