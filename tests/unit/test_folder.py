"""Folder datasets on synthetic PNGs and JPEGs: reading, the stratified split, archives by URL and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DatasetConfig, compose, validate
from pipeline.config.schema import DataFormat, Preparation
from pipeline.core.errors import ConfigError, DataError
from pipeline.data import folder
from pipeline.data.download import download
from pipeline.data.formats import load_split
from pipeline.data.preprocess import preprocess

CLASSES = ["cat", "dog", "fox"]
SIZES = [(12, 16), (8, 8), (20, 10)]  # (width, height) on disk, cycled


def folder_dataset(source: Path | str, **changes) -> DatasetConfig:
    base = validate(compose()).dataset
    fields = {
        **{"name": "pets", "format": DataFormat.folder, "mirrors": [], "files": {}, "source": str(source)},
        **{"sha256": None, "train_dir": None, "test_dir": None, "test_fraction": 0.25, "split_seed": 0},
        **{"image_size": [8, 8], "channels": 3, "num_classes": len(CLASSES), "classes": list(CLASSES)},
        "prepare": Preparation.image,
    }
    return dataclasses.replace(base, **{**fields, **changes})


def write_image(path: Path, value: int, size: tuple[int, int] = (8, 8), kind: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path, kind)


def class_tree(root: Path, per_class: dict[str, int], mixed: bool = True) -> Path:
    """A PNG or JPEG per image, of mixed sizes; each class's pixels a constant colour (value = 80 * label)."""
    for label, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            kind = "JPEG" if i % 2 else "PNG"
            size = SIZES[i % len(SIZES)] if mixed else (8, 8)
            write_image(root / name / f"{i:03d}.{kind.lower()}", 80 * label, size, kind)
    return root


def test_a_folder_of_mixed_rgb_images_reads_in_class_then_file_order(tmp_path, caplog):
    root = class_tree(tmp_path / "data", {"cat": 4, "dog": 5, "fox": 3})
    (root / "dog" / ".DS_Store").write_bytes(b"hidden files are ignored")
    with caplog.at_level(logging.INFO, logger="pipeline.data.folder"):
        x, y, counts = folder.read_split_folders(root, folder_dataset(root))
    assert x.dtype == np.uint8 and x.shape == (12, 8, 8, 3)
    assert np.issubdtype(y.dtype, np.integer) and y.tolist() == [0] * 4 + [1] * 5 + [2] * 3
    assert counts == {"cat": 4, "dog": 5, "fox": 3}
    assert abs(int(x[y == 2][..., 0].mean()) - 160) <= 2  # each class's colour, through PNG and JPEG
    resized = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert len(resized) == 1 and "resized 8 of 12 images to 8x8" in resized[0]
    assert "16x12" in resized[0] and "10x20" in resized[0]  # height x width, as image_size
    gray, _, _ = folder.read_split_folders(root, folder_dataset(root, channels=1, image_size=[6, 5]))
    assert gray.shape == (12, 6, 5, 1)


def test_the_stratified_split_holds_out_each_class_and_repeats_for_a_seed(tmp_path):
    root = class_tree(tmp_path / "data", {"cat": 8, "dog": 4, "fox": 2}, mixed=False)
    dataset = folder_dataset(root)
    first = folder.read_splits(root, dataset)
    assert first["test"][2] == {"cat": 2, "dog": 1, "fox": 1}  # 25 %, at least one per class
    assert first["train"][2] == {"cat": 6, "dog": 3, "fox": 1}
    assert first["train"][0].shape == (10, 8, 8, 3) and first["test"][0].shape == (4, 8, 8, 3)
    assert first["train"][1].tolist() != sorted(first["train"][1].tolist())  # shuffled: validation_split is fair
    again = folder.read_splits(root, dataset)
    other = folder.read_splits(root, folder_dataset(root, split_seed=1))
    for split in ("train", "test"):
        np.testing.assert_array_equal(first[split][0], again[split][0])
        np.testing.assert_array_equal(first[split][1], again[split][1])
    _, y = np.unique(other["train"][1], return_counts=True)
    assert y.tolist() == [6, 3, 1]


def test_a_class_of_one_image_cannot_be_split(tmp_path):
    root = class_tree(tmp_path / "data", {"cat": 3, "dog": 1, "fox": 2})
    with pytest.raises(DataError, match="1 image only") as err:
        folder.read_splits(root, folder_dataset(root))
    assert str(root / "dog") in str(err.value)


def test_declared_train_and_test_folders_are_read_as_the_splits(tmp_path):
    source = tmp_path / "data"
    class_tree(source / "training", {"cat": 3, "dog": 2, "fox": 2})
    class_tree(source / "testing", {"cat": 1, "dog": 1, "fox": 2})
    dataset = folder_dataset(source, train_dir="training", test_dir="testing")
    result = download(dataset, tmp_path / "raw", env={})
    assert result.files == {"folder": tmp_path / "raw"} and result.sources == {"folder": str(source)}
    assert download(dataset, tmp_path / "raw", env={}).sources == {"folder": "cached"}
    counts = preprocess(dataset, tmp_path / "raw", tmp_path / "processed").counts
    assert counts == {"train": 7, "test": 4}
    x, y = load_split(tmp_path / "processed", "test", num_classes=3)
    assert x.shape == (4, 8, 8, 3) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 2]
    # the class folders beside the test folder (train_dir null)
    class_tree(tmp_path / "flat", {"cat": 2, "dog": 2, "fox": 2})
    class_tree(tmp_path / "flat" / "test", {"cat": 1, "dog": 1, "fox": 1})
    splits = folder.read_splits(tmp_path / "flat", folder_dataset(tmp_path / "flat", test_dir="test"))
    assert splits["train"][2] == {"cat": 2, "dog": 2, "fox": 2} and len(splits["test"][1]) == 3


def make_archive(tmp_path: Path, kind: str) -> tuple[str, str]:
    """An archive holding one top-level folder of class folders: (its file:// URL, its SHA-256)."""
    tree = class_tree(tmp_path / "tree" / "pets", {"cat": 2, "dog": 2, "fox": 2})
    path = tmp_path / f"pets.{kind}"
    if kind == "tar.gz":
        with tarfile.open(path, "w:gz") as tf:
            tf.add(tree, arcname="pets")
    else:
        with zipfile.ZipFile(path, "w") as zf:
            for file in sorted(tree.rglob("*")):
                zf.write(file, file.relative_to(tree.parent).as_posix())
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_by_url_is_verified_extracted_and_read(tmp_path, kind):
    url, sha = make_archive(tmp_path, kind)
    dataset = folder_dataset(url, sha256=sha, test_fraction=0.5)
    raw = tmp_path / "raw"
    assert folder.fetch_source(dataset, raw, env={}) == url
    assert sorted(p.name for p in raw.iterdir()) == [folder.MARKER, *CLASSES]  # the single top folder unwrapped
    assert folder.fetch_source(dataset, raw, env={}) == "cached"
    assert preprocess(dataset, raw, tmp_path / "processed").counts == {"train": 3, "test": 3}


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_with_the_wrong_sha256_is_refused_and_leaves_nothing(tmp_path, kind):
    url, _ = make_archive(tmp_path, kind)
    dataset = folder_dataset(url, sha256="0" * 64)
    (tmp_path / "out").mkdir()
    raw = tmp_path / "out" / "raw"
    with pytest.raises(DataError) as err:
        folder.fetch_source(dataset, raw, env={})
    assert str(err.value).startswith(f"{url}: archive SHA-256 ") and "does not match dataset.sha256 000" in str(
        err.value
    )
    assert list((tmp_path / "out").iterdir()) == []  # no raw_dir, no temporary folder beside it


def test_a_url_without_sha256_is_a_config_error(tmp_path):
    url, _ = make_archive(tmp_path, "zip")
    with pytest.raises(ConfigError, match=r"dataset\.sha256"):
        folder.fetch_source(folder_dataset(url), tmp_path / "raw", env={})


TAR_REFUSED = ["../escape.png", "link -> ../../escape.png", "link -> /etc/passwd", "fifo"]


@pytest.mark.parametrize(
    ("filters", "member"),
    [(True, m) for m in TAR_REFUSED]
    # the data filter extracts an absolute name inside the folder, its slash stripped; the fallback refuses it
    + [(False, m) for m in [*TAR_REFUSED, "/tmp/escape.png"]],
    ids=lambda v: {True: "data filter", False: "no filters"}.get(v, v) if isinstance(v, bool) else v,
)
def test_a_tar_member_outside_the_folder_or_not_a_file_is_refused(tmp_path, monkeypatch, filters, member):
    """On Pythons before 3.11.4 (Debian 12's 3.11.2) tarfile has no extraction filters: the pipeline's own
    check refuses the same members (and absolute names)."""
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        name, _, target = member.partition(" -> ")
        info = tarfile.TarInfo(name)
        if target:
            info.type, info.linkname = tarfile.SYMTYPE, target
        elif name == "fifo":
            info.type = tarfile.FIFOTYPE
        else:
            info.size = 1
        tf.addfile(info, io.BytesIO(b"x") if info.size else None)
    dataset = folder_dataset(path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match=rf"^{re.escape(path.as_uri())}: "):
        folder.fetch_source(dataset, tmp_path / "raw", env={})
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "raw").exists()
    assert not Path("/tmp/escape.png").exists()


def test_a_zip_member_outside_the_folder_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../escape.png", b"x")
    dataset = folder_dataset(path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match=r"'\.\./escape\.png' has an absolute path or '\.\.'"):
        folder.fetch_source(dataset, tmp_path / "raw", env={})
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "raw").exists()


def bad_folder(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """(root, the path the message must name, what it must say) for each refusal."""
    root = class_tree(tmp_path / case, {"cat": 2, "dog": 2, "fox": 2})
    if case == "empty":
        for file in (root / "dog").iterdir():
            file.unlink()
        return root, root / "dog", "class folder is empty"
    if case == "text":
        (root / "fox" / "notes.txt").write_text("not a picture")
        return root, root / "fox" / "notes.txt", "not an image Pillow can read"
    if case == "one_class":
        for name in ("dog", "fox"):
            shutil.rmtree(root / name)
        return root, root, "one class only (cat): a classifier needs at least 2 class folders"
    (root / "fox").rename(root / "wolf")
    return root, root, 'set classes: ["cat", "dog", "wolf"]'


@pytest.mark.parametrize("case", ["empty", "text", "one_class", "names"])
def test_bad_data_is_refused_naming_the_path(tmp_path, case):
    root, path, message = bad_folder(tmp_path, case)
    with pytest.raises(DataError) as err:
        folder.read_split_folders(root, folder_dataset(root))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_image_and_a_decompression_bomb_are_refused(tmp_path, monkeypatch):
    root = class_tree(tmp_path / "data", {"cat": 2, "dog": 2, "fox": 2}, mixed=False)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    (root / "cat" / "999.png").write_bytes(buffer.getvalue()[:60])
    with pytest.raises(DataError, match=r"999\.png: not an image Pillow can read"):
        folder.read_split_folders(root, folder_dataset(root))
    (root / "cat" / "999.png").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 8x8 = 64 pixels: over the limit, a warning in Pillow
    with pytest.raises(DataError, match=r"000\.png: refused as a possible decompression bomb"):
        folder.read_split_folders(root, folder_dataset(root))


def test_num_classes_must_count_the_folders(tmp_path):
    root = class_tree(tmp_path / "data", {"cat": 2, "dog": 2, "fox": 2})
    with pytest.raises(DataError, match=r"3 class folders but dataset.num_classes=4") as err:
        folder.read_split_folders(root, folder_dataset(root, num_classes=4))
    assert str(err.value).startswith(str(root))
