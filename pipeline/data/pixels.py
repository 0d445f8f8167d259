"""One image to the pixels a model of this dataset takes: the same code for the preprocess stage (a folder
dataset's images) and for predict and serve (a person's image, ``dataset.prepare: image``).

Consumes: a PIL image, the dataset's ``image_size`` ([height, width]) and ``channels`` (1 or 3). Produces:
uint8 pixels (height, width, channels): converted to grayscale ("L") or RGB, resized with Pillow's bilinear
filter. Scaling to [0, 1] happens where the pixels are loaded (:func:`pipeline.data.formats.load_split`,
:func:`scaled`), as for MNIST.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_pixels(image: Any, image_size: list[int] | tuple[int, int], channels: int) -> np.ndarray:
    from PIL import Image

    height, width = int(image_size[0]), int(image_size[1])
    converted = image.convert("L" if channels == 1 else "RGB")
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def scaled(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], as the model was trained on."""
    return pixels.astype(np.float32) / np.float32(255.0)
