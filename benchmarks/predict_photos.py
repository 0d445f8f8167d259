"""How well ``pipeline.predict.images`` reads digits that look photographed, measured on the MNIST test split.

Consumes: the champion model (``models:/<registry.name>@champion`` from the store in params.yaml) and the
processed test split (``paths.processed_dir``). Produces: the accuracy of the champion on the first
``--images`` test images, as given (the model's own input) and after each transformation below has been
applied to the image and undone by :func:`pipeline.data.imageprep.to_mnist`, printed and written as JSON to
``benchmarks/results/predict-photos-<time>.json``:

- ``clean``: the 28x28 image as a PNG file, white on black;
- ``inverted``: dark ink on light paper;
- ``larger``: drawn 10x larger (280x280 on a 400x360 page);
- ``off_centre``: and placed off-centre;
- ``photo``: all of it with paper noise, a soft focus and JPEG compression (quality 70).

Run: ``python benchmarks/predict_photos.py [--images 1000]`` after ``make run``.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]


def page(digit: np.ndarray, inverted: bool, scale: int, offset: tuple[int, int]) -> np.ndarray:
    """The digit drawn on a page: ``scale`` times larger, at ``offset`` (top, left), ink dark if ``inverted``."""
    size = 28 * scale
    big = np.asarray(
        Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC), np.float32
    )
    height, width = (400, 360) if scale > 1 else (28, 28)
    canvas = np.zeros((height, width), np.float32)
    top, left = offset
    canvas[top : top + size, left : left + size] = big
    return 225.0 - canvas * 0.8 if inverted else canvas


def as_file(pixels: np.ndarray, fmt: str, rng: np.random.Generator | None = None) -> Image.Image:
    if rng is not None:  # paper texture and a soft focus
        pixels = pixels + rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng is not None:
        image = image.filter(ImageFilter.GaussianBlur(1))
    buffer = io.BytesIO()
    image.convert("RGB" if fmt == "JPEG" else "L").save(
        buffer, format=fmt, **({"quality": 70} if fmt == "JPEG" else {})
    )
    return Image.open(io.BytesIO(buffer.getvalue()))


VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    "clean": lambda d, r: as_file(d * 255, "PNG"),
    "inverted": lambda d, r: as_file(page(d, True, 1, (0, 0)), "PNG"),
    "larger": lambda d, r: as_file(page(d, True, 10, (60, 40)), "PNG"),
    "off_centre": lambda d, r: as_file(page(d, True, 10, (100, 10)), "PNG"),
    "photo": lambda d, r: as_file(page(d, True, 10, (100, 10)), "JPEG", r),
}


def main() -> None:
    import mlflow

    from pipeline import tracking
    from pipeline.config import load_params
    from pipeline.data.formats import load_split
    from pipeline.data.imageprep import to_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    cfg = load_params(ROOT / "params.yaml")
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking))
    uri = f"models:/{cfg.registry.name}@{cfg.registry.alias}"
    model = mlflow.keras.load_model(uri)
    x, y = load_split(ROOT / cfg.paths.processed_dir, "test")
    x, y = x[: args.images], y[: args.images]
    rng = np.random.default_rng(0)
    accuracy = {"as_given": float(np.mean(model.predict(x, verbose=0).argmax(1) == y))}
    for name, make in VARIANTS.items():
        prepared = np.stack([to_mnist(make(digit[..., 0], rng)) for digit in x])
        accuracy[name] = float(np.mean(model.predict(prepared, verbose=0).argmax(1) == y))
    for name, value in accuracy.items():
        print(f"{name:>10}: {value:.4f}")
    record = {"model": uri, "version": str(mlflow.MlflowClient().get_model_version_by_alias(cfg.registry.name, cfg.registry.alias).version),
              "images": args.images, "accuracy": accuracy, "when": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"predict-photos-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
