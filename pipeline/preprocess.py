"""Stage ``preprocess``: IDX files -> ``train.npz`` and ``test.npz`` in ``paths.processed_dir``.

Consumes: the verified IDX files in ``paths.raw_dir`` (see :mod:`pipeline.download`).
Produces: one ``.npz`` per split with ``x``, the uint8 pixels shaped (N, 28, 28, 1), and ``y``, uint8
labels (N,). Scaling to [0, 1] happens as the splits are loaded (:func:`pipeline.data.load_split`): float32
would be 4x the bytes to write, hash, cache and read for the same information. No pickles; bytes are
deterministic; written atomically. NumPy only: this stage does not import TensorFlow.

Run: ``python -m pipeline.preprocess`` (reads params.yaml), or ``dvc repro preprocess``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DatasetConfig, load_params
from pipeline.data import SPLITS, read_split, save_npz
from pipeline.download import raw_name
from pipeline.errors import run_cli
from pipeline.timing import Timer

log = logging.getLogger(__name__)


@dataclass
class PreprocessResult:
    paths: dict[str, Path]  # split -> .npz
    counts: dict[str, int]  # split -> samples


def preprocess(dataset: DatasetConfig, raw_dir: Path | str, processed_dir: Path | str) -> PreprocessResult:
    raw_dir, processed_dir = Path(raw_dir), Path(processed_dir)
    paths, counts = {}, {}
    for split in SPLITS:
        images, labels = read_split(
            raw_dir / raw_name(dataset.files[f"{split}_images"]),
            raw_dir / raw_name(dataset.files[f"{split}_labels"]),
            dataset.num_classes,
        )
        x = images[..., None]  # the channel axis Keras' Conv2D expects
        paths[split] = processed_dir / f"{split}.npz"
        save_npz(paths[split], x=x, y=labels)
        counts[split] = len(labels)
        log.info("%s: %d samples, images %s", paths[split], len(labels), x.shape)
    return PreprocessResult(paths, counts)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    timer = Timer("preprocess")
    cfg = load_params()
    timer.mark("config")
    preprocess(cfg.dataset, cfg.paths.raw_dir, cfg.paths.processed_dir)
    timer.mark("preprocess")
    timer.report()


if __name__ == "__main__":
    run_cli(main)
