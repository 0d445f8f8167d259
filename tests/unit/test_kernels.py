"""train.fast_kernels: the seed's arithmetic on faster kernels gives the stock kernels' numbers.

Compared at float32 rounding: one training step from the same weights and dropout masks, the optimizer
alone over several steps, the Dense gradients alone. (Over many steps Adam amplifies rounding wherever a
gradient's running mean nears zero, as any change of summation order does, so longer fits are compared by
their accuracy: the slow tier's full-data run.)
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from pipeline.config import compose, validate
from pipeline.model.fit import compile_model
from pipeline.model.patches import _fused_adam_step, fast_kernels, fuse_adam

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _model(overrides: list[str] = ()) -> keras.Model:
    keras.utils.set_random_seed(7)  # the same initial weights and dropout masks every time
    return compile_model(validate(compose(list(overrides))), "float32")


def _fit(fast: bool) -> tuple[keras.Model, list[str]]:
    """One step of the default (Adam, batch 32) from the same weights, on stock or fast kernels."""
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 32)
    model = _model()
    with fast_kernels(model, enabled=fast) as swapped:
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model, swapped


def test_a_training_step_on_fast_kernels_lands_on_the_stock_weights():
    stock, _ = _fit(fast=False)
    fast, swapped = _fit(fast=True)
    assert swapped == ["ResourceApplyAdam", "BatchMatMulV2 gradients"]
    for a, b, w0 in zip(stock.weights, fast.weights, _model().weights, strict=True):
        assert not np.array_equal(a.numpy(), w0.numpy()), a.path  # every weight moved: the step was compared
        # Adam's first step moves a weight by about its learning rate (1e-3): agreement to 0.1% of a step.
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg=a.path)
    assert type(fast.optimizer) is type(stock.optimizer)  # the saved model names Keras' own optimizer class


@pytest.mark.parametrize("overrides", [["optimizer.amsgrad=true"], ["optimizer=sgd"]])
def test_other_optimizers_keep_their_keras_update(overrides):
    with fast_kernels(_model(overrides)) as swapped:
        assert swapped == ["BatchMatMulV2 gradients"]
    with fast_kernels(_model(), enabled=False) as swapped:
        assert swapped == []


def test_the_one_pass_adam_is_keras_adam():
    """The same gradients, of very different sizes (where epsilon matters too), over five steps."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=1000).astype(np.float32)
    grads = [rng.normal(size=1000).astype(np.float32) * s for s in (1, 1e-3, 1e-6, 1, 10)]

    def run(fused: bool) -> np.ndarray:
        w = keras.Variable(w0.copy())
        opt = keras.optimizers.Adam(learning_rate=1e-3)
        if fused:
            opt.update_step = types.MethodType(_fused_adam_step, opt)
        for g in grads:
            opt.apply([tf.constant(g)], [w])
        return w.numpy()

    keras_w, fused_w = run(False), run(True)
    assert np.abs(keras_w - w0).min() > 1e-4  # every weight moved
    np.testing.assert_allclose(fused_w, keras_w, rtol=0, atol=5e-7)  # a few float32 ulps of weights near 1
    assert not fuse_adam(keras.optimizers.Adam(amsgrad=True)) and not fuse_adam(keras.optimizers.SGD())


def test_the_dense_gradients_are_the_stock_ones():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(32, 3136)).astype(np.float32))
    w = tf.Variable(rng.normal(size=(3136, 512)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(32, 512)).astype(np.float32))

    @tf.function
    def grads() -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.matmul(x, w)
        return tape.gradient(y, [x, w], output_gradients=dy)

    stock = [g.numpy() for g in grads()]
    with fast_kernels(_model()):
        traced = tf.function(grads.python_function)  # traced inside the block: the swapped gradient
        fast = [g.numpy() for g in traced()]
        ops = {op.type for op in traced.get_concrete_function().graph.get_operations()}
    assert "BatchMatMulV2" in ops and "BatchMatMulV2" not in {
        op.type for op in grads.get_concrete_function().graph.get_operations()
    }
    np.testing.assert_allclose(fast[0], dy.numpy() @ w.numpy().T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(fast[0], stock[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fast[1], stock[1], rtol=1e-5, atol=1e-4)


def test_the_stock_matmul_gradient_is_back_after_the_block():
    from tensorflow.python.framework import ops

    stock = ops._gradient_registry.lookup("MatMul")
    _fit(fast=True)
    assert ops._gradient_registry.lookup("MatMul") is stock
    with pytest.raises(RuntimeError), fast_kernels(_model()):
        assert ops._gradient_registry.lookup("MatMul") is not stock
        raise RuntimeError
    assert ops._gradient_registry.lookup("MatMul") is stock


def test_outside_the_tested_versions_the_patches_step_aside_with_one_warning(monkeypatch, caplog):
    """The version guard: a TensorFlow or Keras the patches were not tested with gets the stock path, said once."""
    from pipeline.model import patches

    monkeypatch.setattr(patches, "_version", lambda dist: (9, 0))
    patches.allowed.cache_clear()
    try:
        model = compile_model(validate(compose()), "float32")
        with caplog.at_level("WARNING", logger=patches.__name__):
            for _ in range(2):
                with patches.fast_kernels(model) as swapped:
                    assert swapped == []
        warned = [r for r in caplog.records if "outside the tested" in r.getMessage()]
        assert len(warned) == 1 and "using the stock path" in warned[0].getMessage()
    finally:
        patches.allowed.cache_clear()


def test_one_switch_turns_every_patch_off(monkeypatch):
    from pipeline.model import patches

    monkeypatch.setenv(patches.SWITCH, "0")
    patches.allowed.cache_clear()
    try:
        assert not patches.allowed("fast kernels") and not patches.allowed("lean import")
        with patches.fast_kernels(compile_model(validate(compose()), "float32")) as swapped:
            assert swapped == []
    finally:
        patches.allowed.cache_clear()
