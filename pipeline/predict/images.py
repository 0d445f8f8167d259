"""``python -m pipeline.predict IMAGE...``: what the champion model says about a person's images.

Consumes: PNG, JPEG (any format Pillow reads) files of any size; for a digits dataset (``dataset.prepare:
digit``), white-on-black like MNIST or dark ink on light paper like a photographed digit; the model: by default ``models:/<registry.name>@<registry.alias>``
from the store in ``params.yaml`` (``$MLFLOW_TRACKING_URI`` wins), or ``--model`` with a model URI
(``models:/mnist-cnn/3``, ``runs:/<id>/model``, ``models:/<model_id>``) or a ``.keras`` file.
Produces, per image, one line: the predicted class (the dataset's class name), its probability and the
runner-up::

    digit.jpg: 7 (p=0.998); runner-up 1 (p=0.001)

Each image is prepared as the dataset says (``dataset.prepare``): a digit through
:func:`pipeline.data.imageprep.to_mnist`, as MNIST was made; any other image resized and scaled by the code
the preprocess stage uses (:func:`pipeline.data.pixels.to_pixels`): :func:`pipeline.data.imageprep.prepare_image`,
which the served model runs too (docs/serving.md). A file that is not an image (or one Pillow
refuses, decompression bombs included), or a missing model, is reported on one line with exit status 2.

Run: ``python -m pipeline.predict photo.jpg scan.png`` or ``make predict IMAGES="photo.jpg scan.png"``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config, DatasetConfig, compose, load_params, validate
from pipeline.core.errors import DataError
from pipeline.data.imageprep import ImageSpec, prepare_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probability: float
    runner_up: str
    runner_up_probability: float

    def line(self) -> str:
        return f"{self.path}: {self.label} (p={self.probability:.3f}); runner-up {self.runner_up} (p={self.runner_up_probability:.3f})"


def read_image(path: Path | str, dataset: DatasetConfig | None = None) -> np.ndarray:
    """The image at ``path``, prepared for the model as ``dataset.prepare`` says (default: a digit, as MNIST was
    made); a file that is not an image, or one Pillow refuses (a decompression bomb), names itself."""
    path = Path(path)
    try:
        return prepare_image(path, ImageSpec.of(dataset), name=str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None


def load_classifier(
    model: str | None, cfg: Config, root: Path | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(a function from prepared images (n, height, width, channels) to class probabilities, the model it uses); the store is
    ``cfg``'s, a relative SQLite path taken from ``root`` (the folder of the params file)."""
    from pipeline.model.runtime import import_tensorflow

    import_tensorflow()  # before mlflow.keras imports Keras: TensorFlow's notices once
    if model is not None and model.endswith(".keras"):
        from pipeline.model.score import load_model
        from pipeline.tracking.records import RunRecord, verify_model_file

        here = root or Path.cwd()
        run_info = here / cfg.paths.run_info
        if (here / cfg.paths.model).resolve() == Path(model).resolve() and run_info.is_file():
            verify_model_file(model, RunRecord.read(run_info), run_info)  # the pipeline's file: its run's model
        keras_model = load_model(model)
        return lambda x: np.asarray(keras_model.predict(x, verbose=0)), model
    from pipeline import tracking

    uri = model or f"models:/{cfg.registry.name}@{cfg.registry.alias}"
    keras_model = tracking.load_keras_model(uri, tracking.tracking_uri(cfg.tracking, root))
    return lambda x: np.asarray(keras_model.predict(x, verbose=0)), uri


def predict(paths: Sequence[Path | str], images: np.ndarray, classify: Callable[[np.ndarray], np.ndarray],
            classes: list[str]) -> list[Prediction]:  # fmt: skip
    """One :class:`Prediction` per image (prepared by :func:`read_image`)."""
    out = []
    for path, probs in zip(paths, classify(images), strict=True):
        first, second = np.argsort(probs)[::-1][:2]
        out.append(Prediction(str(path), classes[first], float(probs[first]), classes[second], float(probs[second])))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="PNG or JPEG files, one digit each")
    parser.add_argument("--model", help="a model URI or a .keras file (default: models:/<registry.name>@<alias>)")
    parser.add_argument("--params", default="params.yaml", help="the config (store, registry name, class names)")
    args = parser.parse_args(argv)
    cfg = load_params(args.params) if Path(args.params).is_file() else validate(compose())
    images = np.stack(
        [read_image(p, cfg.dataset) for p in args.images]
    )  # every file is read (or refused) before the model loads
    root = Path(args.params).resolve().parent if Path(args.params).is_file() else None
    classify, used = load_classifier(args.model, cfg, root)
    for prediction in predict(args.images, images, classify, cfg.dataset.classes):
        print(prediction.line())
    log.info("model: %s", used)
