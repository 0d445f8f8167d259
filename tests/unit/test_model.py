"""The model package: the seed's network, the optimizers built from the config, the forward pass and the scoring
arithmetic, in-process on synthetic arrays. The unit tier's only TensorFlow (tests/unit/test_imports.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import compose, validate
from pipeline.model.architectures import SEED_PARAMETERS, build_model
from pipeline.model.score import forward, score


def test_basic_cnn_is_the_seeds_model():
    model = build_model(validate(compose()).model)
    assert model.name == "Basic_CNN"
    assert model.count_params() == SEED_PARAMETERS == 1_676_266
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("Dropout") == 3 and kinds.count("Dense") == 2


class FixedModel:
    """Stands in for a Keras model: returns given probabilities, row i for an image filled with the value i."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def __call__(self, batch, training=False):
        import tensorflow as tf

        return tf.gather(self.probs, tf.cast(batch[:, 0, 0, 0], tf.int32))


def indexed_images(n: int) -> np.ndarray:
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 28, 28, 1)).copy()


#: oneDNN picks its convolution kernels by CPU (AVX2, AVX-512) and batch shape, so the rounding differs
#: between batch sizes: about 1e-8 was seen on an AVX2-only CPU. Probabilities in [0, 1] agree to far better
#: than this, and the class (argmax) is the same.
FORWARD_ATOL = 1e-6


def test_forward_gives_keras_predict_at_any_batch_size():
    import keras

    model = build_model(validate(compose()).model)
    x = keras.random.uniform((1001, 28, 28, 1), seed=1).numpy()
    expected = model.predict(x, batch_size=1000, verbose=0)
    for batch_size in (1000, 7, 4096):  # a last partial batch, many small ones, one batch for all
        got = forward(model, x, batch_size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=FORWARD_ATOL, err_msg=f"batch {batch_size}")
        assert np.array_equal(got.argmax(1), expected.argmax(1)), batch_size
    assert forward(model, x[:0]).shape == (0, 10)


def test_score_counts_argmax_accuracy_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 3])
    probs = np.full((8, 4), 0.1, np.float32)
    probs[np.arange(8), pred] = 0.7
    result = score(FixedModel(probs), indexed_images(8), y, num_classes=4)
    assert result.metrics["test_accuracy"] == 6 / 8 and result.metrics["test_samples"] == 8
    assert result.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
    assert result.per_class_accuracy == [0.5, 1.0, pytest.approx(2 / 3), 1.0]
    assert result.metrics["test_loss"] == pytest.approx(-np.log(0.7) * 6 / 8 - np.log(0.1) * 2 / 8, rel=1e-5)


def test_the_seeds_categorical_metric_is_wrong_on_integer_labels_and_ours_is_right():
    """The seed's trap, pinned: CategoricalAccuracy on integer labels reads nonsense for a perfect model."""
    import keras

    y = np.arange(100) % 10
    probs = np.eye(10, dtype=np.float32)[y]  # a perfect model
    assert score(FixedModel(probs), indexed_images(100), y, 10).metrics["test_accuracy"] == 1.0
    assert float(keras.metrics.CategoricalAccuracy()(y[:, None].astype("float32"), probs)) < 0.2


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

    from pipeline.model.architectures import build_optimizer

    cfg = validate(compose([f"optimizer={name}"]))
    opt = build_optimizer(cfg.optimizer)
    keras_default = type(opt)().get_config()
    for key, value in expected.items():
        assert getattr(cfg.optimizer, key) == value
        assert keras_default[key] == pytest.approx(value), key  # our defaults are Keras' own
    assert isinstance(opt, keras.optimizers.Optimizer)


def test_a_model_is_built_by_its_registered_name():
    from pipeline.core.errors import ConfigError
    from pipeline.model.architectures import ARCHITECTURES

    cfg = validate(compose()).model
    assert "basic_cnn" in ARCHITECTURES and cfg.name == "basic_cnn"
    cfg.name = "no_such_net"
    with pytest.raises(ConfigError, match=r"model\.name='no_such_net': no such architecture; allowed: basic_cnn"):
        build_model(cfg)


def test_lr_scale_multiplies_the_learning_rate():
    from pipeline.model.architectures import build_optimizer

    cfg = validate(compose(["train=fast"]))
    assert float(build_optimizer(cfg.optimizer, cfg.train.lr_scale).learning_rate) == pytest.approx(0.003)


def test_the_second_architecture_is_a_residual_network_of_its_own():
    """resnet_small is not the seed's network: residual additions, batch normalisation, global pooling, under a
    tenth of its parameters (conf/model/resnet_small.yaml says so); it takes any input shape and class count."""
    model = build_model(validate(compose(["model=resnet_small"])).model, 5, (16, 16, 3))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert model.name == "ResNet_small" and "Add" in kinds and "BatchNormalization" in kinds
    assert "GlobalAveragePooling2D" in kinds and "Flatten" not in kinds
    assert model.input_shape == (None, 16, 16, 3) and model.output_shape == (None, 5)
    mnist = build_model(validate(compose(["model=resnet_small"])).model)
    assert mnist.count_params() < SEED_PARAMETERS / 10


def test_a_models_arguments_are_checked_by_its_yaml_and_its_builder():
    """conf/model/<name>.yaml is the builder's schema: an unknown, missing or mistyped argument is refused before
    any work, naming the key; a value out of range is refused by the builder, naming it too."""
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'model\.filter' .*did you mean 'model\.filters'"):
        validate(compose(["model=resnet_small", "+model.filter=[8]"]))
    with pytest.raises(ConfigError, match=r"bad value for 'model\.blocks': 'two'; allowed: a value like 1"):
        validate(compose(["model=resnet_small", "model.blocks=two"]))
    with pytest.raises(ConfigError, match=r"'model\.conv_dropout': 1\.5; allowed: a number in \[0, 1\)"):
        build_model(validate(compose(["model.conv_dropout=1.5"])).model)


def evaluation(confusion: list[list[int]]):
    """An EvalResult for a confusion matrix (actual x predicted), as score() would give it."""
    from pipeline.stages.evaluate import EvalResult

    cm = np.array(confusion)
    labels = np.repeat(np.arange(len(cm)), cm.sum(axis=1))
    predictions = np.concatenate([np.repeat(np.arange(len(cm)), row) for row in cm])
    per_class = (cm.diagonal() / np.maximum(cm.sum(axis=1), 1)).tolist()
    metrics = {"test_loss": 0.1, "test_accuracy": float(np.trace(cm) / cm.sum()), "test_samples": int(cm.sum())}
    return EvalResult(metrics, per_class, cm, predictions=predictions, labels=labels)


def confusion_of(errors: dict[tuple[int, int], int], right: int = 90) -> list[list[int]]:
    cm = np.diag([right] * 10)
    for (actual, predicted), count in errors.items():
        cm[actual, predicted] = count
    return cm.tolist()


def test_the_confusion_report_holds_only_the_misclassified_images(make_config):
    """DVC's confusion plot shows the errors: one (actual, predicted) row per wrong prediction, none for the
    diagonal; a perfect model writes the header alone."""
    import csv
    from collections import Counter
    from pathlib import Path

    from pipeline.stages.evaluate import write_reports

    cfg = make_config()
    result = evaluation(confusion_of({(4, 9): 3, (7, 1): 2, (9, 4): 1}))
    write_reports(cfg, result)
    with open(cfg.paths.confusion, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"]
    assert len(rows) - 1 == int(np.sum(result.predictions != result.labels)) == 6
    assert Counter(map(tuple, rows[1:])) == {("4", "9"): 3, ("7", "1"): 2, ("9", "4"): 1}

    write_reports(cfg, evaluation(confusion_of({})))
    assert Path(cfg.paths.confusion).read_text().splitlines() == ["actual,predicted"]


def test_the_per_class_report_gives_error_rates_with_their_counts(make_config):
    import csv

    from pipeline.stages.evaluate import write_reports

    cfg = make_config()
    write_reports(cfg, evaluation(confusion_of({(4, 9): 3, (7, 1): 2, (9, 4): 1}, right=97)))
    with open(cfg.paths.per_class, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["class", "error_rate", "errors", "images"]
    assert [r["class"] for r in rows] == cfg.dataset.classes
    four, seven, zero = rows[4], rows[7], rows[0]
    assert (four["error_rate"], four["errors"], four["images"]) == (str(round(3 / 100, 6)), "3", "100")
    assert (seven["error_rate"], seven["errors"], seven["images"]) == (str(round(2 / 99, 6)), "2", "99")
    assert (float(zero["error_rate"]), zero["errors"], zero["images"]) == (0.0, "0", "97")


def test_the_confusion_figure_has_a_log_scale_and_blank_empty_cells():
    """MLflow's figure keeps the full matrix; on a log colour scale three errors show beside 980 right."""
    from matplotlib.colors import LogNorm

    from pipeline.stages.evaluate import confusion_figure

    cm = np.array(confusion_of({(4, 9): 3}, right=980))
    fig = confusion_figure(cm, "test accuracy 0.9997", [str(c) for c in range(10)])
    image = fig.axes[0].images[0]
    assert isinstance(image.norm, LogNorm) and image.norm.vmin == 1 and image.norm.vmax == 980
    shown = image.get_array()
    assert shown.mask[0, 1] and not shown.mask[4, 9] and not shown.mask[0, 0]  # zero cells: masked, drawn white
    assert tuple(image.cmap.get_bad()) == (1.0, 1.0, 1.0, 1.0)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"980", "3"} <= texts and "0" not in texts
    fig.savefig(__import__("io").BytesIO(), format="png")  # it renders
