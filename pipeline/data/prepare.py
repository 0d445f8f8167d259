"""Prepared data for the Hydra app and the tests: each dataset's processed splits in a content-addressed cache.

Consumes: the ``dataset`` config, ``$DATA_MIRROR`` and a cache folder (``paths.data_cache``, the tests use
the per-user cache). Produces ``<cache>/raw/<dataset>-<content>/`` (the verified IDX files, by
:func:`pipeline.data.download.download`) and ``<cache>/processed/<dataset>-<key>/{train,test}.npz`` (by
:func:`pipeline.data.preprocess.preprocess`), where the key hashes the dataset's content (its files' SHA-256s and
class count) and the source of the preparing code (the import closure of :mod:`pipeline.data.preprocess`).

It never writes DVC's outputs (``data/raw``, ``data/processed``), so ``dvc status`` stays clean whatever the
app runs, and a sweep over datasets trains and tests each job on its own data. A processed folder is
complete once it exists: it is built under a temporary name and renamed into place, under a lock per
dataset, so parallel jobs prepare each dataset once and a killed job leaves no half-made folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DatasetConfig
from pipeline.core import closure
from pipeline.core.files import exclusive_lock, remove, sha256_file, write_json
from pipeline.data.formats import SPLITS

log = logging.getLogger(__name__)
MARKER = "prepared.json"
PREPARING_MODULE = "pipeline.data.preprocess"


@dataclass(frozen=True)
class Prepared:
    raw_dir: Path  # the verified IDX files
    processed_dir: Path  # train.npz and test.npz
    digest: str  # SHA-256 over the .npz files: exactly which bytes a job trained and tested on
    prepared: bool  # True if this call did the work, False if the cache already held it


def key(dataset: DatasetConfig) -> str:
    """Names the processed data: the dataset's content, its class count and the preparing code."""
    parts = {
        "content": dataset.content_hash(),
        # what the preprocess stage reads besides the files (dvc.yaml's preprocess params)
        **{k: str(getattr(dataset, k)) for k in ("num_classes", "classes", "image_size", "channels", "train_dir",
                                                  "test_dir", "test_fraction", "split_seed")},
        "code": closure.source_hash(PREPARING_MODULE),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def locations(dataset: DatasetConfig, cache_dir: Path | str) -> tuple[Path, Path]:
    cache = Path(cache_dir)
    raw = cache / "raw" / f"{dataset.name}-{dataset.content_hash()[:16]}"
    return raw, cache / "processed" / f"{dataset.name}-{key(dataset)}"


def _ready(raw: Path, processed: Path) -> Prepared | None:
    try:
        marker = json.loads((processed / MARKER).read_text(encoding="utf-8"))
        return Prepared(raw, processed, marker["digest"], prepared=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_data(dataset: DatasetConfig, cache_dir: Path | str, env: dict[str, str] | None = None) -> Prepared:
    """The dataset's processed splits, prepared (download verified, preprocess) only if the cache lacks them."""
    from pipeline.data.download import download
    from pipeline.data.preprocess import preprocess

    raw, processed = locations(dataset, cache_dir)
    if ready := _ready(raw, processed):
        return ready
    with exclusive_lock(Path(cache_dir) / "locks" / f"{raw.name}.lock"):
        if ready := _ready(raw, processed):  # another process prepared it while we waited
            return ready
        log.info("preparing %s into %s", dataset.name, processed)
        download(dataset, raw, env)
        # Under the lock nobody else is preparing: any temporary folder, or a final one without its
        # marker, is what a killed process left.
        remove(processed, *processed.parent.glob(f".{processed.name}.tmp-*"))
        tmp = processed.with_name(f".{processed.name}.tmp-{os.getpid()}")
        preprocess(dataset, raw, tmp)
        files = {f"{split}.npz": sha256_file(tmp / f"{split}.npz") for split in SPLITS}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        write_json(tmp / MARKER, {"dataset": dataset.name, "content_sha256": dataset.content_hash(),
                                  "key": processed.name, "files": files, "digest": digest})  # fmt: skip
        os.rename(tmp, processed)
        return Prepared(raw, processed, digest, prepared=True)
