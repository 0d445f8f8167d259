"""The run records: small JSON files that tie DVC's outputs to the MLflow runs that made them, and the check that
a model file is the one its run logged.

Consumes and produces ``paths.run_info`` (the training run, its logged model and the model file's SHA-256) and
``paths.eval_info`` (the evaluation's run). JSON and hashes only: reading a record costs no MLflow import, so the
evaluate stage checks the model before it forks its scoring child.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.core.files import sha256_file, write_json


@dataclass(frozen=True)
class RunRecord:
    """What a stage leaves for later stages and for people: which MLflow run and logged model it made."""

    run_id: str
    experiment_id: str
    model_id: str | None = None
    train_run_id: str | None = None  # for an evaluation: the training run it evaluated
    model_sha256: str | None = None  # the content of the model file the training saved (and logged)

    def write(self, path: Path | str) -> None:
        write_json(path, {k: v for k, v in self.__dict__.items() if v is not None})

    @classmethod
    def read(cls, path: Path | str) -> RunRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data.get("run_id"), str):
                raise ValueError("no run_id")
            keys = ("run_id", "experiment_id", "model_id", "train_run_id", "model_sha256")
            return cls(**{k: data.get(k) for k in keys})
        except FileNotFoundError:
            raise DataError(
                f"{path}: not found; it names the MLflow run of the train stage (dvc repro train)"
            ) from None
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not a valid run record ({exc})") from None


def verify_model_file(path: Path | str, record: RunRecord, record_path: Path | str) -> str:
    """The model file's SHA-256, if it is the one the training run saved and logged; a :class:`DataError` naming
    both otherwise, so that no number is ever attached to the wrong model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (run the train stage: dvc repro train)")
    got = sha256_file(path)
    if record.model_sha256 is None:
        raise DataError(
            f"{record_path}: names no model file content (written before model hashes were recorded): "
            "rerun the train stage (dvc repro -f train)"
        )
    if got != record.model_sha256:
        raise DataError(
            f"{path}: SHA-256 {got[:16]}... is not the model that run {record.run_id} saved and logged "
            f"(model {record.model_id}, SHA-256 {record.model_sha256[:16]}..., {record_path}): rerun the train "
            "stage (dvc repro train), or restore its output (dvc checkout)"
        )
    return got
