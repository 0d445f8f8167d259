"""Data, on synthetic files: IDX parsing and its errors, download verification by SHA-256, .npz files."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import FileSpec, compose, validate
from pipeline.core.errors import DataError
from pipeline.data.download import fetch, mirror_list
from pipeline.data.formats import read_idx, read_split


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write(tmp_path / "x", idx_bytes(arr)), ndim=3)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    ("data", "ndim", "message"),
    [
        (b"\x00\x00", 1, "too short for an IDX header"),
        (b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00", 1, "bad IDX magic number 01020801"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00", 1, "data type 0x0d is not unsigned byte"),
        (idx_bytes(np.zeros((2, 2), np.uint8)), 1, "has 2 dimensions, expected 1"),
        (b"\x00\x00\x08\x03\x00\x00", 3, "truncated IDX header"),
        (idx_bytes(np.zeros(5, np.uint8))[:-1], 1, "file size 12 does not match its IDX header (5,)"),
        (idx_bytes(np.zeros(5, np.uint8)) + b"\x00", 1, "file size 14 does not match"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 0), 1, "contain a zero"),
    ],
)
def test_read_idx_errors_name_file_and_fault(tmp_path, data, ndim, message):
    path = write(tmp_path / "broken-idx", data)
    with pytest.raises(DataError) as err:
        read_idx(path, ndim)
    assert str(path) in str(err.value) and message in str(err.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere: IDX file not found"):
        read_idx(tmp_path / "nothere", 1)


def test_read_split_checks_counts_and_label_range(tmp_path):
    images = write(tmp_path / "img", idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    labels2 = write(tmp_path / "lab2", idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(DataError, match=r"has 3 images but .*lab2 has 2 labels"):
        read_split(images, labels2, 10)
    bad = write(tmp_path / "bad", idx_bytes(np.array([1, 12, 3], np.uint8)))
    with pytest.raises(DataError, match=r"bad: label 12 at index 1 is outside 0-9"):
        read_split(images, bad, 10)


# ---------------------------------------------------------------- download


def make_mirror(folder: Path, payload: bytes, name: str = "f.gz") -> FileSpec:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(payload))
    return FileSpec(file=name, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))


def test_data_mirror_is_tried_first_and_relative_to_dvc_root(tmp_path):
    cfg = validate(compose())
    assert mirror_list(cfg.dataset, {"DATA_MIRROR": "/m"}) == ["/m", *cfg.dataset.mirrors]
    assert mirror_list(cfg.dataset, {"DATA_MIRROR": "../m", "DVC_ROOT": "/repo"})[0] == "/repo/../m"
    assert mirror_list(cfg.dataset, {}) == cfg.dataset.mirrors


def test_checksum_mismatch_tries_next_mirror(tmp_path):
    good = make_mirror(tmp_path / "good", b"real content")
    make_mirror(tmp_path / "evil", b"other content")
    dest = tmp_path / "out" / "f"
    dest.parent.mkdir()
    source = fetch(good, dest, [str(tmp_path / "evil"), (tmp_path / "good").as_uri()], timeout=5, retries=1)
    assert source == (tmp_path / "good").as_uri() and dest.read_bytes() == b"real content"


def test_all_mirrors_failing_lists_each_and_leaves_nothing(tmp_path):
    spec = make_mirror(tmp_path / "evil", b"other content")
    spec.sha256 = hashlib.sha256(b"expected").hexdigest()
    spec.size = len(b"other content")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "f.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    dest = tmp_path / "out" / "f"
    dest.parent.mkdir()
    mirrors = [str(tmp_path / "evil"), str(tmp_path / "missing"), (tmp_path / "trunc").as_uri()]
    with pytest.raises(DataError) as err:
        fetch(spec, dest, mirrors, timeout=5, retries=2, backoff=0.01)
    text = str(err.value)
    assert text.startswith("f.gz: every mirror failed")
    assert text.endswith("no internet? set DATA_MIRROR to a folder or URL holding the dataset's files (tried first)")
    assert f"{tmp_path / 'evil'}: SHA-256 mismatch" in text
    assert f"{tmp_path / 'missing'}: No such file or directory" in text
    assert "truncated or corrupt gzip" in text and "(after 2 attempts)" in text
    assert list(dest.parent.iterdir()) == []  # no partial or temporary file left behind


def test_gzip_bomb_is_refused(tmp_path):
    spec = make_mirror(tmp_path / "bomb", b"\0" * 5_000_000)
    spec.size = 1000  # the config expects 1 kB; the mirror's file inflates to 5 MB
    dest = tmp_path / "out" / "f"
    dest.parent.mkdir()
    with pytest.raises(DataError, match=r"more than the expected 1000 bytes .*gzip bomb"):
        fetch(spec, dest, [str(tmp_path / "bomb")], timeout=5, retries=1)
    assert list(dest.parent.iterdir()) == []


def test_a_local_mirror_may_hold_the_files_decompressed(tmp_path):
    """A folder of verified IDX files (another checkout's data/raw, the tests' cache) serves as a mirror."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "f").write_bytes(b"real content")
    spec = FileSpec(file="f.gz", sha256=hashlib.sha256(b"real content").hexdigest(), size=12)
    dest = tmp_path / "out" / "f"
    assert fetch(spec, dest, [str(tmp_path / "plain")], timeout=5, retries=1) == str(tmp_path / "plain")
    assert dest.read_bytes() == b"real content"


def test_data_stages_do_not_import_tensorflow_or_mlflow():
    """Read from the source (imports inside functions too): download and preprocess start in a blink."""
    from pipeline.core.closure import third_party

    for stage in ("pipeline.data.download", "pipeline.data.preprocess", "pipeline.data.prepare"):
        assert not {"tensorflow", "keras", "mlflow", "sklearn"} & third_party(stage), stage
