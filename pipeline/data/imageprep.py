"""Turn any image of one handwritten digit into what the model was trained on, as MNIST was made; and open a
person's image file (or its bytes) safely and prepare it as its dataset says: the one preparation that
``pipeline.predict`` and the served model (:mod:`pipeline.tracking.served`) both run.

Consumes: a PIL image or an array (any size, grayscale or colour; white ink on black like MNIST, or dark
ink on light paper like a photographed digit); for :func:`prepare_image`, a file path or the file's bytes and an
:class:`ImageSpec`. Produces: a float32 (28, 28, 1) array in [0, 1], white ink on black, the digit fitted into
20x20 and centred by its centre of mass in 28x28 (:func:`to_mnist`); or, for other datasets
(``dataset.prepare: image``), the pixels resized and scaled as the preprocess stage does.

The steps of :func:`to_mnist`, in order:

1. grayscale, scaled to [0, 1];
2. polarity: the background is what covers the border; a light one is inverted (ink becomes bright);
3. contrast: the background level (the border's median) becomes 0 and the brightest ink 1, after a slight
   blur that keeps paper texture and JPEG noise from counting as ink;
4. crop to the ink (pixels above half of the brightest);
5. resize so the longer side is 20 pixels, keeping the aspect ratio (Lanczos, on floats);
6. paste into 28x28 so that the centre of mass sits at the centre, as LeCun et al. made MNIST.

Tested on generated clean and photo-like images (``tests/unit/test_imageprep.py``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.schema import DatasetConfig, Preparation
from pipeline.core.errors import DataError
from pipeline.data.pixels import scaled, to_pixels

SIZE, BOX = 28, 20
INK = 0.5  # of the brightest ink: what counts when cropping


def to_mnist(image: Any, name: str = "image") -> np.ndarray:
    """The (28, 28, 1) float32 input the model expects, from one image of one digit (see the module)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    gray = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
    if gray.shape[0] < 2 or gray.shape[1] < 2:
        raise DataError(f"{name}: {gray.shape[1]}x{gray.shape[0]} pixels is too small to hold a digit")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray, border = 1.0 - gray, 1.0 - border
    radius = max(gray.shape) / 200  # about 0.5 % of the image: texture and noise, not strokes
    smooth = gaussian_filter(gray, sigma=radius).astype(np.float32)
    background, top = float(np.median(border)), float(smooth.max())
    if top - background < 0.1:
        raise DataError(f"{name}: no digit found (the image is nearly uniform)")
    ink = np.clip((smooth - background) / (top - background), 0.0, 1.0)
    rows, cols = np.nonzero(ink > INK)
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = BOX / max(digit.shape)
    height, width = max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale))
    fitted = np.asarray(Image.fromarray(digit, mode="F").resize((width, height), Image.Resampling.LANCZOS))
    fitted = np.clip(fitted, 0.0, 1.0)
    return _centre_by_mass(fitted).astype(np.float32)[..., None]


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste ``digit`` into SIZE x SIZE with its centre of mass at the centre (clipped to stay inside)."""
    height, width = digit.shape
    total = digit.sum()
    cy = float((digit.sum(axis=1) * np.arange(height)).sum() / total) if total else (height - 1) / 2
    cx = float((digit.sum(axis=0) * np.arange(width)).sum() / total) if total else (width - 1) / 2
    top = int(np.clip(round((SIZE - 1) / 2 - cy), 0, SIZE - height))
    left = int(np.clip(round((SIZE - 1) / 2 - cx), 0, SIZE - width))
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas


@dataclass(frozen=True)
class ImageSpec:
    """How a person's image becomes a model input: the dataset's ``prepare``, ``image_size`` and ``channels``
    (what the served model keeps of the dataset's config)."""

    prepare: Preparation = Preparation.digit
    image_size: tuple[int, int] = (SIZE, SIZE)
    channels: int = 1

    @classmethod
    def of(cls, dataset: DatasetConfig | None) -> ImageSpec:
        if dataset is None:
            return cls()
        return cls(dataset.prepare, (int(dataset.image_size[0]), int(dataset.image_size[1])), int(dataset.channels))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The prepared image's (height, width, channels): the model's input, less the batch."""
        return self.image_size[0], self.image_size[1], self.channels


def prepare_image(source: Path | str | bytes, spec: ImageSpec | None = None, name: str = "image") -> np.ndarray:
    """The model input for one image file (a path, or its bytes), prepared as ``spec`` says: a digit by
    :func:`to_mnist`, any other image resized and scaled as the preprocess stage does. Anything Pillow cannot read,
    or refuses (a decompression bomb: more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused, not just warned
    about), is a DataError naming ``name`` (a missing file: FileNotFoundError, for the caller to name)."""
    from PIL import Image, UnidentifiedImageError

    spec = spec or ImageSpec()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.load()
                if spec.prepare is Preparation.digit:
                    return to_mnist(image, name=name)
                return scaled(to_pixels(image, spec.image_size, spec.channels))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise DataError(f"{name}: not an image Pillow can read ({type(exc).__name__})") from None
