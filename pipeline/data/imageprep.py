"""Turn any image of one handwritten digit into what the model was trained on, as MNIST was made.

Consumes: a PIL image or an array (any size, grayscale or colour; white ink on black like MNIST, or dark
ink on light paper like a photographed digit). Produces: a float32 (28, 28, 1) array in [0, 1], white ink
on black, the digit fitted into 20x20 and centred by its centre of mass in 28x28.

The steps, in order:

1. grayscale, scaled to [0, 1];
2. polarity: the background is what covers the border; a light one is inverted (ink becomes bright);
3. contrast: the background level (the border's median) becomes 0 and the brightest ink 1, after a slight
   blur that keeps paper texture and JPEG noise from counting as ink;
4. crop to the ink (pixels above half of the brightest);
5. resize so the longer side is 20 pixels, keeping the aspect ratio (Lanczos, on floats);
6. paste into 28x28 so that the centre of mass sits at the centre, as LeCun et al. made MNIST.

Used by :mod:`pipeline.predict.images`; tested on generated clean and photo-like images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import DataError

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
