"""An image-folder dataset (``format: folder``): one subfolder of images per class, the layout of Keras'
``image_dataset_from_directory`` and torchvision's ``ImageFolder``.

Consumes: ``dataset.source``, a local folder or the http(s):// or file:// URL of a ``.tar.gz``/``.tgz``/``.zip``
archive holding it (verified by ``dataset.sha256``), and ``$DATA_MIRROR`` (a folder or URL holding the archive
under its file name, tried first). Produces: the folder in ``raw_dir`` (:func:`fetch_source`, the download
stage), then uint8 pixels (N, height, width, channels) and integer labels per split (:func:`read_splits`, the
preprocess stage, which writes them as ``train.npz`` and ``test.npz`` exactly like IDX).

Class folders are the sorted subfolder names (label i is the i-th, and must equal ``dataset.classes``); hidden
entries are ignored; every other file must be an image Pillow reads, converted and resized as
:func:`pipeline.data.pixels.to_pixels` does for predict and serve. The test split is ``test_dir``, or a seeded
(``split_seed``), stratified share (``test_fraction``) of each class. The training split is stored in a seeded
shuffled order: Keras' ``validation_split`` takes the last samples, which in class order would be one class.
Every problem is a :class:`~pipeline.core.errors.DataError` naming the path. Run by ``dvc repro download
preprocess``; NumPy and Pillow only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.config import DatasetConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.files import remove, tree_digest, write_json
from pipeline.core.http import TransferFailure, open_url
from pipeline.core.redact import redact
from pipeline.data.pixels import to_pixels

log = logging.getLogger(__name__)
CHUNK = 1 << 20
#: In the fetched folder: where it came from and what was verified (the archive's SHA-256, a folder's digest).
MARKER = ".source.json"
URL_SCHEMES = ("http", "https", "file")
IGNORED = {"__MACOSX"}  # macOS' resource forks beside a zip's content


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED


def is_url(source: str) -> bool:
    return "://" in source


# --------------------------------------------------------------------------- the download stage


def fetch_source(dataset: DatasetConfig, raw_dir: Path | str, env: Mapping[str, str] | None = None) -> str:
    """Make ``raw_dir`` hold the dataset's folder (its class folders, or ``train_dir``/``test_dir``): a local
    ``source`` copied, an archive downloaded, verified by ``dataset.sha256`` and extracted; each built beside
    ``raw_dir`` and renamed into place. Returns where it came from (redacted), or ``"cached"`` when ``raw_dir``
    already holds it."""
    raw_dir = Path(raw_dir)
    source = dataset.source
    if not source:
        raise ConfigError("dataset.source is not set: a folder dataset needs a local folder or an archive's URL")
    if is_url(source):
        return _fetch_archive(dataset, source, raw_dir, os.environ if env is None else env)
    return _copy_folder(Path(source), raw_dir)


def _marker(folder: Path) -> dict:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _work_dir(raw_dir: Path) -> Path:
    """A temporary folder beside ``raw_dir`` (same file system: renamed into place)."""
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}.tmp-", dir=raw_dir.parent))


def _replace(new: Path, dest: Path) -> None:
    """Rename the folder ``new`` to ``dest``, replacing what ``dest`` held."""
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        remove(old)
        os.rename(dest, old)
        os.rename(new, dest)
        remove(old)
    else:
        os.rename(new, dest)


def _copy_folder(source: Path, raw_dir: Path) -> str:
    if not source.is_dir():
        raise DataError(
            f"{source}: dataset.source is not a folder (a local folder of class folders, or the http(s):// or "
            "file:// URL of a .tar.gz or .zip archive)"
        )
    if raw_dir.resolve() == source.resolve() or source.resolve() in raw_dir.resolve().parents:
        raise ConfigError(f"dataset.source={source} holds paths.raw_dir={raw_dir}: point one elsewhere")
    digest = tree_digest(source)
    if _marker(raw_dir).get("tree") == digest:
        return "cached"
    start = time.perf_counter()
    work = _work_dir(raw_dir)
    try:
        shutil.copytree(source, work / "copy")
        write_json(work / "copy" / MARKER, {"source": str(source), "tree": digest})
        _replace(work / "copy", raw_dir)
    finally:
        remove(work)
    log.info("%s: copied from %s in %.1f s", raw_dir, source, time.perf_counter() - start)
    return str(source)


def _candidates(url: str, env: Mapping[str, str]) -> list[str]:
    """$DATA_MIRROR/<the archive's file name> first (a relative folder is taken from $DVC_ROOT), then ``url``."""
    extra = env.get("DATA_MIRROR", "").strip()
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    if not extra or not name:
        return [url]
    if "://" in extra:
        return [extra.rstrip("/") + "/" + urllib.parse.quote(name), url]
    if not os.path.isabs(extra) and env.get("DVC_ROOT"):
        extra = os.path.join(env["DVC_ROOT"], extra)
    local = Path(extra) / name
    return [local.resolve().as_uri(), url] if local.is_file() else [url]


def _fetch_archive(dataset: DatasetConfig, url: str, raw_dir: Path, env: Mapping[str, str]) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ConfigError(
            f"dataset.source={redact(url)}: allowed: a local folder, or an http://, https:// or file:// URL"
        )
    if not dataset.sha256:
        raise ConfigError(
            f"dataset.sha256 is null but dataset.source is a URL ({redact(url)}): set dataset.sha256 to the "
            "archive's SHA-256 (sha256sum <archive>), which the download stage verifies"
        )
    want = dataset.sha256.lower()
    if _marker(raw_dir).get("sha256") == want:
        return "cached"
    work = _work_dir(raw_dir)
    try:
        archive, origin = _download(dataset, url, want, work / "archive", env)
        _extract(archive, work / "x", redact(url))
        root = _source_root(work / "x", dataset)
        write_json(root / MARKER, {"source": redact(url), "sha256": want})
        _replace(root, raw_dir)
    finally:
        remove(work)
    return origin


def _download(dataset: DatasetConfig, url: str, want: str, dest: Path, env: Mapping[str, str]) -> tuple[Path, str]:
    """The archive, verified, at ``dest``, from the first candidate that delivers it; (``dest``, where from)."""
    failures = []
    for candidate in _candidates(url, env):
        where = redact(candidate)
        for attempt in range(1, dataset.retries + 1):
            start = time.perf_counter()
            try:
                got, size = _stream(candidate, dest, dataset.timeout)
            except TransferFailure as exc:
                log.warning("%s: %s (attempt %d/%d)", where, exc, attempt, dataset.retries)
                if not exc.transient or attempt == dataset.retries:
                    failures.append(f"{where}: {exc}" + (f" (after {attempt} attempts)" if attempt > 1 else ""))
                    break
                time.sleep(min(2.0 ** (attempt - 1), 8.0))  # 1 s, 2 s, 4 s...
                continue
            if got != want:
                message = f"{where}: archive SHA-256 {got} does not match dataset.sha256 {want}"
                if candidate == url:
                    raise DataError(message)
                log.warning("%s", message)
                failures.append(message)
                break
            seconds = time.perf_counter() - start
            log.info("%s: %.1f MB archive verified in %.1f s", where, size / 1e6, seconds)
            return dest, where
    raise DataError(f"{redact(url)}: the archive could not be downloaded:\n  " + "\n  ".join(failures))


def _stream(url: str, dest: Path, timeout: float) -> tuple[str, int]:
    """Stream ``url`` to ``dest`` (``timeout``: seconds without data); its (SHA-256, size)."""
    h, size = hashlib.sha256(), 0
    with open_url(url, timeout) as stream, open(dest, "wb") as out:
        try:
            while chunk := stream.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        except (TimeoutError, ConnectionError, http.client.IncompleteRead) as exc:
            raise TransferFailure(f"{type(exc).__name__} while reading: {exc}", transient=True) from None
    return h.hexdigest(), size


def _escapes(name: str) -> bool:
    """An archive member's path (or a link's target) that is absolute or climbs out with ``..``."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or bool(parts and ":" in parts[0]) or ".." in parts


def _tar_members(tf: tarfile.TarFile, label: str) -> list[tarfile.TarInfo]:
    """The members of ``tf``, each checked as tarfile's ``data`` filter checks it, for a Python without the
    filters (before 3.11.4, e.g. Debian 12's 3.11.2): no absolute or ``..`` paths, no link out, no device."""
    members = tf.getmembers()
    for member in members:
        if _escapes(member.name) or ((member.issym() or member.islnk()) and _escapes(member.linkname)):
            raise DataError(f"{label}: archive member {member.name!r} has an absolute path or '..' (refused)")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise DataError(f"{label}: archive member {member.name!r} is a device or FIFO (refused)")
    return members


def _extract(archive: Path, dest: Path, label: str) -> None:
    """Extract a .tar.gz/.tgz (tarfile's ``data`` filter: no absolute paths, ``..``, links out or devices) or a
    .zip (refusing absolute paths and ``..``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if _escapes(name):
                        raise DataError(f"{label}: archive member {name!r} has an absolute path or '..' (refused)")
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                    tf.extractall(dest, filter="data")
                else:
                    tf.extractall(dest, members=_tar_members(tf, label))
        else:
            raise DataError(f"{label}: not a .tar.gz, .tgz or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract the archive ({type(exc).__name__}: {exc})") from None


def _source_root(extracted: Path, dataset: DatasetConfig) -> Path:
    """An archive holding one top-level folder (not the train or test folder itself): that folder."""
    entries = [p for p in extracted.iterdir() if not _hidden(p.name)]
    splits = {PurePosixPath(d).parts[0] for d in (dataset.train_dir, dataset.test_dir) if d}
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in splits:
        return entries[0]
    return extracted


# --------------------------------------------------------------------------- the preprocess stage


def class_folders(root: Path, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The sorted names of ``root``'s subfolders (hidden ones and ``exclude`` left out)."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (the dataset's class folders: run the download stage)")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name) and p.name not in exclude)


def _check_classes(root: Path, folders: list[str], dataset: DatasetConfig) -> None:
    if not folders:
        raise DataError(f"{root}: no class folders: a classifier needs at least 2 class folders (one per class)")
    if len(folders) == 1:
        raise DataError(f"{root}: one class only ({folders[0]}): a classifier needs at least 2 class folders")
    if folders != list(dataset.classes):
        listed = ", ".join(json.dumps(name) for name in folders)
        raise DataError(
            f"{root}: class folders {folders} differ from dataset.classes {list(dataset.classes)}: set "
            f"classes: [{listed}] and num_classes: {len(folders)} (the folder names, sorted: label i is the i-th)"
        )
    if len(folders) != dataset.num_classes:
        raise DataError(
            f"{root}: {len(folders)} class folders but dataset.num_classes={dataset.num_classes}: set "
            f"num_classes: {len(folders)}"
        )


def _image_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` but hidden ones, sorted by relative path."""
    files = [p for p in folder.rglob("*") if p.is_file() and not any(map(_hidden, p.relative_to(folder).parts))]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def read_image(path: Path, image_size: list[int], channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image's uint8 pixels (height, width, channels) and its (height, width) on disk. A file Pillow cannot
    read, or a possible decompression bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS``), is a DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                width, height = image.size
                return to_pixels(image, image_size, channels), (height, width)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not an image Pillow can read ({type(exc).__name__}: {exc})") from None


def _read(
    root: Path, dataset: DatasetConfig, exclude: frozenset[str] = frozenset()
) -> tuple[np.ndarray, np.ndarray, dict[str, int], Counter[tuple[int, int]]]:
    """(x, y, images per class, sizes of the images that were resized) of one folder of class folders."""
    folders = class_folders(root, exclude)
    _check_classes(root, folders, dataset)
    files = []
    for name in folders:
        found = _image_files(root / name)
        if not found:
            raise DataError(f"{root / name}: class folder is empty")
        files.append(found)
    height, width = dataset.image_size
    n = sum(map(len, files))
    x = np.empty((n, height, width, dataset.channels), dtype=np.uint8)
    y = np.empty(n, dtype=np.min_scalar_type(dataset.num_classes - 1))
    resized: Counter[tuple[int, int]] = Counter()
    i = 0
    for label, paths in enumerate(files):
        for path in paths:
            x[i], size = read_image(path, dataset.image_size, dataset.channels)
            y[i] = label
            if size != (height, width):
                resized[size] += 1
            i += 1
    return x, y, {name: len(paths) for name, paths in zip(folders, files, strict=True)}, resized


def _log_resized(where: Path, resized: Counter[tuple[int, int]], total: int, image_size: list[int]) -> None:
    if resized:
        sizes = ", ".join(f"{h}x{w} ({k})" for (h, w), k in resized.most_common(5))
        more = f" and {len(resized) - 5} other sizes" if len(resized) > 5 else ""
        log.info("%s: resized %d of %d images to %dx%d (height x width) from %s%s", where, resized.total(), total,
                 image_size[0], image_size[1], sizes, more)  # fmt: skip


def read_split_folders(root: Path | str, dataset: DatasetConfig) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One folder of class folders: uint8 pixels (N, height, width, channels) in class then file-name order,
    integer labels (N,) and the number of images per class. Logs one line if any image was resized."""
    root = Path(root)
    x, y, counts, resized = _read(root, dataset)
    _log_resized(root, resized, len(y), dataset.image_size)
    return x, y, counts


def stratified_split(
    y: np.ndarray, classes: Sequence[str | Path], test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``test_fraction`` of each class (rounded, at least 1, never all) drawn with
    ``default_rng(seed)``; test sorted, train in a seeded shuffled order. A class of one image is an error."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        members = np.flatnonzero(y == label)
        if len(members) < 2:
            raise DataError(
                f"{name}: {len(members)} image only: a stratified split needs at least 2 per class (one to train "
                "on, one to test on), or a test folder (dataset.test_dir)"
            )
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        drawn = rng.permutation(members)
        test.append(drawn[:n_test])
        train.append(drawn[n_test:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(test))


def read_splits(root: Path | str, dataset: DatasetConfig) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, int]]]:
    """``{"train": (x, y, counts), "test": (...)}`` from the fetched folder: ``train_dir`` (or ``root``) and
    ``test_dir`` when it is set, else a stratified split of ``train_dir`` (or ``root``) by ``split_seed``."""
    root = Path(root)
    train_root = root / dataset.train_dir if dataset.train_dir else root
    if dataset.test_dir:
        test_root = root / dataset.test_dir
        # the class folders may sit in root beside the test folder
        exclude = frozenset({PurePosixPath(dataset.test_dir).parts[0]}) if not dataset.train_dir else frozenset()
        x, y, counts, resized = _read(train_root, dataset, exclude)
        tx, ty, tcounts, tresized = _read(test_root, dataset)
        _log_resized(root, resized + tresized, len(y) + len(ty), dataset.image_size)
        order = np.random.default_rng(dataset.split_seed).permutation(len(y))
        return {"train": (x[order], y[order], counts), "test": (tx, ty, tcounts)}
    if dataset.test_fraction <= 0:
        raise ConfigError(
            "dataset.test_fraction is 0 and dataset.test_dir is null: no test split; set a fraction in (0, 1) or "
            "the test folder"
        )
    x, y, _, resized = _read(train_root, dataset)
    _log_resized(train_root, resized, len(y), dataset.image_size)
    names = [train_root / name for name in dataset.classes]
    train, test = stratified_split(y, names, dataset.test_fraction, dataset.split_seed)
    split = {}
    for key, idx in (("train", train), ("test", test)):
        split[key] = (x[idx], y[idx], {c: int(np.count_nonzero(y[idx] == k)) for k, c in enumerate(dataset.classes)})
    return split
