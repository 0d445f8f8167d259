"""The image preparation for prediction, on generated images: clean MNIST-like and photo-like."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.core.errors import DataError
from pipeline.data.imageprep import to_mnist


def drawn_seven(
    size: int, ink: int, paper: int, offset: tuple[int, int] = (0, 0), width: int | None = None
) -> Image.Image:
    """A '7' drawn with strokes on a square canvas: `ink` on `paper` (0-255), shifted by `offset` (fractions
    of 1/100 of the size)."""
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    s, (dx, dy) = size / 100, offset
    points = [(30 + dx, 25 + dy), (70 + dx, 25 + dy), (45 + dx, 80 + dy)]
    draw.line([(x * s, y * s) for x, y in points], fill=ink, width=width or max(2, int(8 * s)))
    return image


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    a = a[..., 0]
    return float((a.sum(1) * np.arange(28)).sum() / a.sum()), float((a.sum(0) * np.arange(28)).sum() / a.sum())


def photo_like(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paper texture, a soft focus (0.5 % of the size) and JPEG compression."""
    noisy = np.asarray(image, np.float32) + rng.normal(0, 8, image.size[::-1])
    focus = ImageFilter.GaussianBlur(max(0.5, image.size[0] / 200))
    blurred = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(focus)
    buffer = io.BytesIO()
    blurred.convert("RGB").save(buffer, format="JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_a_clean_mnist_like_image_comes_out_as_mnist():
    out = to_mnist(drawn_seven(28, ink=255, paper=0, width=3))
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0, abs=0.05)
    rows, cols = np.nonzero(out[..., 0] > 0.5)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)  # fitted into 20x20
    assert centre_of_mass(out) == pytest.approx((13.5, 13.5), abs=0.6)


@pytest.mark.parametrize("size", [64, 300, 1200])
def test_a_photographed_digit_looks_like_the_clean_one(size):
    """Dark ink on light paper, larger, off-centre, noisy, blurred, JPEG: the same 28x28 picture."""
    rng = np.random.default_rng(size)
    clean = to_mnist(drawn_seven(400, ink=255, paper=0))
    photo = to_mnist(photo_like(drawn_seven(size, ink=40, paper=220, offset=(-15, 12)), rng), name="photo.jpg")
    assert photo[0, 0, 0] == 0.0 and photo.max() > 0.9  # the background black, the ink white
    assert centre_of_mass(photo) == pytest.approx((13.5, 13.5), abs=0.6)
    assert np.corrcoef(clean.ravel(), photo.ravel())[0, 1] > 0.85


def test_colour_and_arrays_are_accepted():
    rgb = np.stack([np.asarray(drawn_seven(50, ink=20, paper=240))] * 3, axis=-1)
    assert to_mnist(rgb).shape == (28, 28, 1)


def test_a_blank_image_is_refused_by_name():
    with pytest.raises(DataError, match=r"blank\.png: no digit found"):
        to_mnist(Image.new("L", (40, 40), 200), name="blank.png")
