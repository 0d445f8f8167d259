"""Files: atomic output, cross-process locks, content hashes, and the per-user cache folder.

Every stage writes through :func:`atomic_path`: the content goes to a temporary sibling (same folder,
same suffix, so Keras and NumPy accept it) and is renamed into place only when the block succeeds, so
nothing half-written ever sits at a path a later stage or DVC reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on any failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive_lock(path: Path | str, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (a folder, or a lock file created if missing) across processes.

    Yields True once held. With ``wait=False`` it yields False at once if another process holds it. The
    kernel releases a flock when its holder dies, so a killed process never leaves a stale lock.
    """
    path = Path(path)
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep every file whole
        os.close(fd)
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def user_cache_dir() -> Path:
    """This project's per-user cache (``$XDG_CACHE_HOME`` or ``~/.cache``): data the tests fetch once per
    machine, and the run records of tracking servers."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mnist-mlops-pipeline"


def sha256_file(path: Path | str, algorithm: str = "sha256") -> str:
    """A file's digest; ``algorithm="md5"`` gives the hash DVC 3 records for it in ``dvc.lock``."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def remove(*paths: Path | str) -> None:
    """Remove earlier outputs before a stage writes new ones, as DVC does, so a failure leaves none."""
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def tree_digest(folder: Path | str) -> str:
    """SHA-256 over every file below ``folder``: its path relative to the folder and its content's SHA-256, in
    sorted order (a folder's content, wherever it lies)."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return h.hexdigest()
