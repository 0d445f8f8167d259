"""Fetching a dataset's files, verified, from its mirrors.

Consumes: ``dataset`` (mirrors, file names, SHA-256 and size of the decompressed content) and ``$DATA_MIRROR``
(a directory or URL tried before the configured mirrors; how machines without internet get the data).
Produces: the decompressed, verified files in a folder (:func:`download`). A folder dataset (``format: folder``)
is fetched by :func:`pipeline.data.folder.fetch_source` instead: a local folder copied, or an archive downloaded,
verified by its SHA-256 and extracted.

Each mirror is tried in order, with a bounded timeout and retries for transient failures; a mirror that fails
(HTTP error, refused connection, timeout, truncated body, wrong content) is reported and the next one is
tried. Content is verified by SHA-256 after decompression, decompression stops at the expected size (no gzip
bomb fills the disk), and a file is renamed into place only once verified. Files already present and verified
are kept, so re-running fetches nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import DatasetConfig, FileSpec
from pipeline.config.schema import DataFormat
from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path, sha256_file
from pipeline.core.http import TransferFailure, open_url
from pipeline.core.redact import redact

log = logging.getLogger(__name__)
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


#: One mirror could not deliver one file; ``transient`` failures are retried.
MirrorFailure = TransferFailure


@dataclass
class DownloadResult:
    # idx: key (train_images, ...) -> verified raw file; folder: "folder" -> raw_dir, the verified class folders
    files: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # key -> where it came from (redacted), or "cached"


def raw_name(spec: FileSpec) -> str:
    return spec.file[:-3] if spec.file.endswith(".gz") else spec.file


def is_verified(path: Path, spec: FileSpec) -> bool:
    return path.is_file() and path.stat().st_size == spec.size and sha256_file(path) == spec.sha256


def mirror_list(dataset: DatasetConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """$DATA_MIRROR first (a relative directory is taken from $DVC_ROOT when DVC runs us), then the config."""
    env = os.environ if env is None else env
    mirrors = list(dataset.mirrors)
    extra = env.get("DATA_MIRROR", "").strip()
    if extra:
        if "://" not in extra and not os.path.isabs(extra) and env.get("DVC_ROOT"):
            extra = os.path.join(env["DVC_ROOT"], extra)
        mirrors.insert(0, extra)
    return mirrors


def _open(base: str, name: str, timeout: float):
    """Open ``name`` under a mirror: a local directory, or a file://, http:// or https:// URL.

    A local directory may hold the files decompressed (``data/raw`` of another checkout, the tests' cache).
    """
    if "://" not in base:
        path = Path(base) / name
        if not path.is_file() and name.endswith(".gz") and (Path(base) / name[:-3]).is_file():
            path = Path(base) / name[:-3]
        try:
            return open(path, "rb")
        except OSError as exc:
            raise MirrorFailure(f"{exc.strerror}: {path}") from None
    return open_url(base.rstrip("/") + "/" + urllib.parse.quote(name), timeout)


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read (to sniff the gzip magic number), put back in front."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._head[: len(buffer)] if self._head else self._stream.read(len(buffer))
        self._head = self._head[len(data) :]
        buffer[: len(data)] = data
        return len(data)


def _fetch_one(base: str, spec: FileSpec, dest: Path, timeout: float) -> None:
    """Stream, decompress (bounded by spec.size), hash, and rename into place only if verified.

    In a terminal a progress bar (tqdm) shows the bytes; in a log, the caller writes one line per file."""
    from tqdm import tqdm

    bar = tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.file, leave=False, disable=not sys.stderr.isatty())
    with bar, _open(base, spec.file, timeout) as stream, atomic_path(dest) as tmp:
        h = hashlib.sha256()
        total = 0
        try:
            head = stream.read(2)
            body = io.BufferedReader(_Prefixed(head, stream), CHUNK)
            source = gzip.GzipFile(fileobj=body) if head == GZIP_MAGIC else body
            with source, open(tmp, "wb") as out:
                while chunk := source.read(CHUNK):
                    total += len(chunk)
                    if total > spec.size:
                        raise MirrorFailure(
                            f"decompresses to more than the expected {spec.size} bytes (refused: possible gzip bomb)"
                        )
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise MirrorFailure(f"truncated or corrupt gzip ({exc})", transient=True) from None
        except (TimeoutError, ConnectionError) as exc:
            raise MirrorFailure(f"{type(exc).__name__} while reading: {exc}", transient=True) from None
        if total != spec.size:
            raise MirrorFailure(f"decompressed size {total} != expected {spec.size}")
        if h.hexdigest() != spec.sha256:
            raise MirrorFailure(f"SHA-256 mismatch: got {h.hexdigest()}, expected {spec.sha256}")


def fetch(spec: FileSpec, dest: Path, mirrors: list[str], timeout: float, retries: int, backoff: float = 1.0) -> str:
    """Get one verified file from the first mirror that delivers it; return that mirror (redacted)."""
    failures: list[str] = []
    for base in mirrors:
        for attempt in range(1, retries + 1):
            try:
                _fetch_one(base, spec, dest, timeout)
                return redact(base)
            except MirrorFailure as exc:
                last = f"{redact(base)}: {exc}"
                log.warning("%s: %s (attempt %d/%d)", spec.file, last, attempt, retries)
                if not exc.transient or attempt == retries:
                    failures.append(last + (f" (after {attempt} attempts)" if attempt > 1 else ""))
                    break
                time.sleep(backoff * min(2.0 ** (attempt - 1), 8.0))  # 1 s, 2 s, 4 s... by default
    tried = "\n  ".join(failures) or "no mirror configured"
    hint = "no internet? set DATA_MIRROR to a folder or URL holding the dataset's files (tried first)"
    raise DataError(f"{spec.file}: every mirror failed:\n  {tried}\n{hint}")


def download(dataset: DatasetConfig, raw_dir: Path | str, env: dict[str, str] | None = None) -> DownloadResult:
    """Make ``raw_dir`` hold the dataset's verified files, fetching only what is missing or wrong: the four IDX
    files (``format: idx``), or the folder of class folders (``format: folder``, :mod:`pipeline.data.folder`)."""
    raw_dir = Path(raw_dir)
    if dataset.format == DataFormat.folder:
        from pipeline.data import folder

        return DownloadResult(files={"folder": raw_dir}, sources={"folder": folder.fetch_source(dataset, raw_dir, env)})
    raw_dir.mkdir(parents=True, exist_ok=True)
    mirrors = mirror_list(dataset, env)
    result = DownloadResult()
    for key, spec in dataset.files.items():
        dest = raw_dir / raw_name(spec)
        if is_verified(dest, spec):
            result.sources[key] = "cached"
        else:
            start = time.perf_counter()
            result.sources[key] = fetch(spec, dest, mirrors, dataset.timeout, dataset.retries)
            seconds = time.perf_counter() - start
            log.info("%s: %.1f MB verified in %.1f s (%.1f MB/s), from %s", dest, spec.size / 1e6, seconds,
                     spec.size / 1e6 / max(seconds, 1e-9), result.sources[key])  # fmt: skip
        result.files[key] = dest
    return result
