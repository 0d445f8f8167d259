"""Reading and writing the data files: IDX (MNIST's format) and the processed ``.npz`` splits.

Consumes IDX files (``data/raw/``) and ``.npz`` files (``data/processed/``); produces NumPy arrays.
Every check names the file and what is wrong, and raises :class:`~pipeline.core.errors.DataError`.
``.npz`` files are written deterministically (fixed zip timestamps, so the same data gives the same
bytes and DVC's hashes stay put) and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path

IDX_UBYTE = 0x08
SPLITS = ("train", "test")


def read_idx(path: Path | str, ndim: int) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    if len(buf) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{path}: bad IDX magic number {buf[:4].hex()} (must start with 0000)")
    if buf[2] != IDX_UBYTE:
        raise DataError(f"{path}: IDX data type 0x{buf[2]:02x} is not unsigned byte (0x08)")
    if buf[3] != ndim:
        raise DataError(f"{path}: IDX file has {buf[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    if any(d == 0 for d in dims):
        raise DataError(f"{path}: IDX dimensions {dims} contain a zero")
    expected = header + int(np.prod(dims))
    if len(buf) != expected:
        raise DataError(
            f"{path}: file size {len(buf)} does not match its IDX header {dims} (expected {expected} bytes)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def read_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's images (N, H, W) and labels (N,), checking that they belong together."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise DataError(
            f"{labels_path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0-{num_classes - 1}"
            f" ({bad.size} such labels)"
        )
    return images, labels


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically, with fixed timestamps (same data, same bytes)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def load_split(processed_dir: Path | str, split: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Load ``<processed_dir>/<split>.npz``: float32 images (N, H, W, C), C 1 (grayscale) or 3 (RGB), scaled to
    [0, 1] from the stored uint8 pixels, integer labels (N,)."""
    path = Path(processed_dir) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: processed data not found (run the preprocess stage: dvc repro preprocess)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)} (has {sorted(npz.files)})")
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: corrupt or unreadable .npz ({exc})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{path}: images must be uint8 pixels (N, H, W, 1 or 3 channels), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers (N,) matching {len(x)} images, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0-{num_classes - 1}")
    # Multiplied into a preallocated float32 array: no float64 intermediate.
    scaled = np.empty(x.shape, dtype=np.float32)
    np.multiply(x, np.float32(1.0 / 255.0), out=scaled)
    return scaled, y
