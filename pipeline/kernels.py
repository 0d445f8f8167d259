"""The seed's training arithmetic on TensorFlow's faster CPU kernels (``train.fast_kernels``).

Consumes: a compiled Keras model (TensorFlow backend). Produces: nothing; :func:`fast_kernels` is a context
manager for the ``fit`` it wraps. Two places where TensorFlow's stock choice of kernel is slow on this CPU,
found by profiling a training step op by op (``benchmarks/step_profile.py``):

- Adam. Keras 3 updates each variable with ten element-wise ops, each a full pass over memory (the dense
  kernel alone is 6.4 MB); TensorFlow's ``ResourceApplyAdam`` does the same update in one pass. The formula
  is the same, line for line (``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``m += (g - m) * (1 - beta_1)``,
  ``v += (g^2 - v) * (1 - beta_2)``, ``w -= m * alpha / (sqrt(v) + epsilon)``). Swapped on the optimizer
  instance only: its class (and so the saved model) stays Keras' ``Adam``.
- The gradients of ``MatMul`` (the Dense layers): TensorFlow computes ``dy @ W^T`` and ``x^T @ dy`` with
  ``MatMul``, which oneDNN runs through its old GEMM interface (3.4 ms for the 32x512 @ 512x3136 product
  at batch 32). ``BatchMatMulV2`` computes the same two products through oneDNN's newer matmul primitive
  (about 1 ms). The gradient function is swapped in TensorFlow's registry for the duration of the block
  (functions traced inside it keep the faster gradient) and put back on exit.

The results equal the stock kernels' to float rounding (``tests/unit/test_kernels.py`` trains the same steps
both ways); AMSGrad and distribution strategies keep Keras' own update.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


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
    primitive; yields the names of the kernels swapped in (empty when ``enabled`` is false)."""
    if not enabled:
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
