"""Preparing a dataset's raw files into the processed splits: ``train.npz`` and ``test.npz``.

Consumes: the verified IDX files in a folder (see :mod:`pipeline.data.download`), or a folder dataset's class
folders (``format: folder``, read by :mod:`pipeline.data.folder`). Produces: one ``.npz`` per split with ``x``,
the uint8 pixels shaped (N, height, width, channels) ((N, 28, 28, 1) for MNIST), and ``y``, integer labels (N,)
(uint8 for up to 256 classes). Scaling to [0, 1]
happens as the splits are loaded (:func:`pipeline.data.formats.load_split`): float32 would be 4x the bytes to
write, hash, cache and read for the same information. No pickles; bytes are deterministic; written
atomically. NumPy only: no TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DatasetConfig
from pipeline.config.schema import DataFormat
from pipeline.data.download import raw_name
from pipeline.data.formats import SPLITS, read_split, save_npz

log = logging.getLogger(__name__)


@dataclass
class PreprocessResult:
    paths: dict[str, Path]  # split -> .npz
    counts: dict[str, int]  # split -> samples


def preprocess(dataset: DatasetConfig, raw_dir: Path | str, processed_dir: Path | str) -> PreprocessResult:
    raw_dir, processed_dir = Path(raw_dir), Path(processed_dir)
    if dataset.format == DataFormat.folder:
        return _preprocess_folder(dataset, raw_dir, processed_dir)
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


def _preprocess_folder(dataset: DatasetConfig, raw_dir: Path, processed_dir: Path) -> PreprocessResult:
    from pipeline.data import folder

    paths, counts = {}, {}
    for split, (x, y, per_class) in folder.read_splits(raw_dir, dataset).items():
        paths[split] = processed_dir / f"{split}.npz"
        save_npz(paths[split], x=x, y=y)
        counts[split] = len(y)
        log.info("%s: %d samples, images %s, per class %s", paths[split], len(y), x.shape, per_class)
    return PreprocessResult(paths, counts)
