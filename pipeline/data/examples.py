"""An image-folder dataset to try the pipeline's folder format on, offline: scikit-learn's bundled 8x8 digits
(1,797 images, 10 classes) written as PNGs, one subfolder per class.

Consumes nothing (scikit-learn ships the images; MLflow installs scikit-learn). Produces ``<folder>/<digit>/*.png``
(default ``data/examples/sk_digits``, what ``conf/dataset/sk_digits.yaml`` reads). Run:
``python -m pipeline.data.examples [folder]``, then ``python -m pipeline.run dataset=sk_digits model=resnet_small``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DEFAULT = Path("data/examples/sk_digits")


def write_sk_digits(root: Path | str = DEFAULT) -> list[tuple[Path, str]]:
    """Write the digits as grayscale PNGs under ``root/<digit>/``; returns (file, class) for each image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    written = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        Image.fromarray((image * (255 / 16)).astype(np.uint8), mode="L").save(path)
        written.append((path, str(label)))
    return written


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    written = write_sk_digits(root)
    print(f"wrote {len(written)} images in {len({c for _, c in written})} class folders under {root}/")


if __name__ == "__main__":
    main()
