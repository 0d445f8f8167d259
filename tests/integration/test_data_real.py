"""The real datasets through the real stages: MNIST verified and preprocessed, Fashion-MNIST from Debian."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import compose, validate
from pipeline.data.download import download
from pipeline.data.formats import load_split


def test_processed_mnist_is_float_scaled_with_known_class_counts(mnist):
    x, y = load_split(mnist.processed_dir, "train")
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert y.shape == (60000,) and set(np.unique(y)) == set(range(10))
    xt, yt = load_split(mnist.processed_dir, "test")
    assert xt.shape == (10000, 28, 28, 1) and len(yt) == 10000
    assert np.bincount(yt).tolist()[:3] == [980, 1135, 1032]  # MNIST's known test class counts


def test_download_real_mnist_verifies_and_skips_verified(mirror, tmp_path):
    cfg = validate(compose())
    first = download(cfg.dataset, tmp_path / "raw", env={"DATA_MIRROR": str(mirror)})
    assert set(first.sources.values()) == {str(mirror)}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )
    again = download(cfg.dataset, tmp_path / "raw", env={"DATA_MIRROR": str(mirror)})
    assert set(again.sources.values()) == {"cached"}
    # A tampered file is detected and fetched again.
    target = tmp_path / "raw" / "t10k-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-1] + b"\x07")
    fixed = download(cfg.dataset, tmp_path / "raw", env={"DATA_MIRROR": str(mirror)})
    assert fixed.sources["test_labels"] == str(mirror) and fixed.sources["train_images"] == "cached"


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_fashion_mnist_skips_the_wrong_mirror_and_verifies(mirror, tmp_path):
    """$DATA_MIRROR holds MNIST: its files fail Fashion-MNIST's checksums, and Debian's copy is used."""
    from pipeline.data.preprocess import preprocess

    cfg = validate(compose(["dataset=fashion_mnist"]))
    result = download(cfg.dataset, tmp_path / "raw", env={"DATA_MIRROR": str(mirror)})
    assert set(result.sources.values()) == {str(FASHION)}
    counts = preprocess(cfg.dataset, tmp_path / "raw", tmp_path / "processed").counts
    assert counts == {"train": 60000, "test": 10000}
    _, y = load_split(tmp_path / "processed", "test")
    assert np.bincount(y).tolist() == [1000] * 10  # Fashion-MNIST's balanced test set
