"""Preprocessing and the Hydra app's prepared-data cache, on a small synthetic dataset."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DatasetConfig, FileSpec, compose, validate
from pipeline.data import prepare
from pipeline.data.formats import load_split
from pipeline.data.preprocess import preprocess

SPLITS = {"train": 12, "test": 5}


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def synthetic_dataset(folder: Path, name: str = "tiny", seed: int = 0) -> DatasetConfig:
    """A mirror folder of gzipped IDX files (28x28 images, labels 0-9) and the dataset config naming them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in SPLITS.items():
        prefix = "train" if split == "train" else "t10k"
        for kind, arr in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", np.arange(n) % 10)):
            content = idx_bytes(np.asarray(arr))
            fname = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
            (folder / fname).write_bytes(gzip.compress(content))
            files[f"{split}_{kind}"] = FileSpec(fname, hashlib.sha256(content).hexdigest(), len(content))
    mnist = validate(compose()).dataset  # an IDX dataset like MNIST, with these files
    return dataclasses.replace(mnist, name=name, mirrors=[str(folder)], files=files, timeout=5, retries=1)


def test_preprocess_keeps_uint8_pixels_loaded_as_float32_and_is_byte_for_byte_deterministic(tmp_path):
    from pipeline.data.download import download

    dataset = synthetic_dataset(tmp_path / "mirror")
    download(dataset, tmp_path / "raw", env={})
    first = preprocess(dataset, tmp_path / "raw", tmp_path / "a")
    preprocess(dataset, tmp_path / "raw", tmp_path / "b")
    assert first.counts == SPLITS
    with np.load(tmp_path / "a" / "train.npz") as stored:
        pixels = stored["x"]
    assert pixels.dtype == np.uint8 and pixels.shape == (12, 28, 28, 1)
    x, y = load_split(tmp_path / "a", "train")
    assert x.dtype == np.float32 and np.allclose(x, pixels / 255.0, rtol=1e-6, atol=0) and x.max() <= 1.0
    assert y.tolist() == [i % 10 for i in range(12)]
    # Same data, same bytes: DVC sees no change when preprocess reruns.
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.npz").read_bytes() == (tmp_path / "b" / f"{split}.npz").read_bytes()


def test_prepared_data_is_cached_per_content_and_per_preparing_code(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    tiny = synthetic_dataset(tmp_path / "m1")
    other = synthetic_dataset(tmp_path / "m2", name="tiny", seed=1)  # same name, other content

    first = prepare.ensure_data(tiny, cache, env={})
    assert first.prepared and (first.processed_dir / "train.npz").is_file()
    again = prepare.ensure_data(tiny, cache, env={})
    assert not again.prepared and again == prepare.Prepared(first.raw_dir, first.processed_dir, first.digest, False)

    second = prepare.ensure_data(other, cache, env={})
    assert second.prepared and second.processed_dir != first.processed_dir and second.digest != first.digest

    # A change to the preparing code (any module preprocess imports) names a new folder: prepared again.
    real = prepare.closure.source_hash
    monkeypatch.setattr(prepare.closure, "source_hash", lambda m: "edited" + real(m))
    changed = prepare.ensure_data(tiny, cache, env={})
    assert changed.prepared and changed.processed_dir != first.processed_dir
    assert changed.digest == first.digest  # the same code output, but not assumed to be


def test_an_interrupted_preparation_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch):
    tiny = synthetic_dataset(tmp_path / "m")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.data.preprocess.save_npz", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure_data(tiny, tmp_path / "cache", env={})
    _, processed = prepare.locations(tiny, tmp_path / "cache")
    assert not processed.exists()
    monkeypatch.undo()
    assert prepare.ensure_data(tiny, tmp_path / "cache", env={}).prepared  # and the next call prepares it
