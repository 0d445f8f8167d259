"""MLflow tracking: where the store is, runs that end honestly, and the records that link DVC's outputs to them.

Consumes: ``tracking`` config, ``$MLFLOW_TRACKING_URI`` (wins over the config) and ``$DVC_ROOT`` (set by
DVC inside the temporary copies of queued experiments). Produces: MLflow runs holding every config value
as a dotted param (secrets masked), tags (git commit, data hash, DVC experiment name), per-epoch and test
metrics and artifacts (logged by each stage's ``log_*`` function, called by the stage's caller); and the
run record files (``paths.run_info``, ``paths.eval_info``) that tie DVC's outputs to those runs.

The store. A relative SQLite path (the default ``sqlite:///mlflow.db``) is taken from the project root,
never the current directory, so queued DVC experiments log to the project's store. A SQLite store keeps
its artifacts (``mlruns/``) and the records of its runs in progress (``<db>-running/``) beside the
database file: another ``tracking.uri`` takes all three elsewhere, and the project's ``mlruns/`` is only
the default store's. A server's run records live in the per-user cache.

Run status. A run ends FINISHED on success, FAILED on an exception and KILLED on SIGINT or SIGTERM
(SIGTERM handling is in place before the run is created), keeping what was logged so far. While it runs,
a record (pid and process start time, written atomically) says who owns it; the record is removed only
after the run has ended, and :func:`reap_orphans` marks KILLED only runs whose owner is gone (SIGKILL,
power loss). SQLite's ``database is locked`` is retried with backoff, and a retried call that creates
something (a run, a logged model) first looks for what the failed attempt may have created.

History. A finished run is never rewritten by a later execution: ``evaluate`` completes the run that
``train`` opened only while that run holds no evaluation yet; otherwise (evaluation code or params
changed, ``train`` restored from DVC's run-cache) the evaluation gets a run of its own, a child of the
training run, and its metrics are linked to the logged model by ``model_id``.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.config import Config, TrackingConfig, flatten, to_dict
from pipeline.errors import DataError
from pipeline.files import exclusive_lock, user_cache_dir, write_json
from pipeline.redact import redact, redact_tree

T = TypeVar("T")
#: MLflow 3's UI opens an experiment in the view its kind names; without it, the GenAI view (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SERVER_SCHEMES = ("http", "https", "databricks")
#: Tag of a run or logged model naming the attempt that created it, so a retry can find it.
ATTEMPT_TAG = "pipeline.attempt"


class Terminated(BaseException):
    """SIGTERM arrived; unwinds like KeyboardInterrupt so the run is marked KILLED."""


# --------------------------------------------------------------------------- where the store is


def project_root() -> Path:
    """The nearest folder at or above the current one holding ``dvc.yaml``.

    Inside DVC's temporary copy of a queued experiment (``<root>/.dvc/tmp/...``) it is ``$DVC_ROOT``, the
    project the copy came from. A ``$DVC_ROOT`` left in the shell from another project changes nothing.
    """
    here = Path.cwd().resolve()
    nearest = next((f for f in (here, *here.parents) if (f / "dvc.yaml").is_file()), here)
    if os.environ.get("DVC_ROOT"):
        root = Path(os.environ["DVC_ROOT"]).resolve()
        if (root / "dvc.yaml").is_file() and (root / ".dvc" / "tmp") in nearest.parents:
            return root
    return nearest


def tracking_uri(tracking: TrackingConfig, root: Path | None = None) -> str:
    """The store: ``$MLFLOW_TRACKING_URI``, else ``tracking.uri`` with a relative SQLite path taken from
    ``root`` (default: the project root)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root or project_root()) / uri[len('sqlite:///') :]}"  # a relative SQLite path: the root's
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]) if uri.startswith("sqlite:///") else None


def is_server(uri: str) -> bool:
    """The store is a tracking server (each call a round trip), not a database file."""
    return urlsplit(uri).scheme in SERVER_SCHEMES


def artifact_location(uri: str) -> str | None:
    """A SQLite store's artifacts go to ``mlruns/`` beside its database; any other store decides itself."""
    db = _sqlite_path(uri)
    return (db.parent / "mlruns").as_uri() if db else None


def running_dir(uri: str) -> Path:
    """Folder of the records of this store's runs in progress: beside a SQLite database, else per user."""
    db = _sqlite_path(uri)
    if db:
        return db.with_name(db.name + "-running")
    digest = hashlib.sha256(redact(uri).encode()).hexdigest()[:16]
    return user_cache_dir() / "mlflow-running" / digest


# --------------------------------------------------------------------------- calls that survive a busy store


def _is_locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def retry(fn: Callable[..., T], *args: Any, recover: Callable[[], T | None] | None = None, attempts: int = 12,
          **kwargs: Any) -> T:  # fmt: skip
    """Call an MLflow function, retrying SQLite's 'database is locked' with jittered backoff.

    ``recover``, for calls that create something: after a failed attempt it returns what that attempt
    created anyway (the commit may have succeeded before the error), so a retry never creates a second.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or sqlalchemy's OperationalError
            if not _is_locked(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))
            if recover is not None and (found := retry(recover)) is not None:
                return found
    raise AssertionError("unreachable")


@functools.cache  # once per server and process (setup runs for every run opened); a failure is not cached
def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """A tracking server that does not answer fails at once with a clear error, not after MLflow's retries
    (minutes). Its ``/health`` needs no login: a refused login is reported by the first real call."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answers; what it says about the real calls, MLflow reports
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it (make server), or point "
            "MLFLOW_TRACKING_URI / tracking.uri at a running one"
        ) from None


def setup(tracking: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed."""
    uri = tracking_uri(tracking)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    # First use of a SQLite store creates its tables; two processes doing that at once fail
    # ('duplicate column name'), so first contact is serialised across processes.
    db = _sqlite_path(uri)
    with exclusive_lock(db.with_name(db.name + ".lock")) if db else contextlib.nullcontext():
        client = mlflow.MlflowClient()
        exp = retry(client.get_experiment_by_name, tracking.experiment)
        if exp is None:
            return retry(
                client.create_experiment,
                tracking.experiment,
                artifact_location=artifact_location(uri),
                tags=EXPERIMENT_KIND,
            )
        if not set(EXPERIMENT_KIND) & set(exp.tags):  # made before this setting, or elsewhere: never overridden
            for key, value in EXPERIMENT_KIND.items():
                retry(client.set_experiment_tag, exp.experiment_id, key, value)
        return exp.experiment_id


def create_run(client: mlflow.MlflowClient, experiment_id: str, run_name: str | None, tags: dict[str, str]) -> str:
    """Create a run exactly once, even when the store reports 'locked' after committing it."""
    attempt = uuid.uuid4().hex

    def recover() -> Any:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{ATTEMPT_TAG}` = '{attempt}'")
        return found[0] if found else None

    run = retry(
        client.create_run, experiment_id, run_name=run_name, tags={**tags, ATTEMPT_TAG: attempt}, recover=recover
    )
    return run.info.run_id


# --------------------------------------------------------------------------- run records (who owns a run)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(record: dict[str, Any]) -> bool:
    if record.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: not ours to judge
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = record.get("started")
    return started is None or _process_start(pid) in (None, started)


def record_add(uri: str, run_id: str) -> None:
    """This process owns ``run_id`` (the record is renamed into place: a reader never sees half of it)."""
    pid = os.getpid()
    write_json(
        running_dir(uri) / f"{run_id}.json", {"pid": pid, "started": _process_start(pid), "host": socket.gethostname()}
    )


def record_remove(uri: str, run_id: str) -> None:
    (running_dir(uri) / f"{run_id}.json").unlink(missing_ok=True)


def reap_orphans(uri: str) -> list[str]:
    """Mark KILLED the runs whose owner died without ending them (SIGKILL, power loss); return their ids."""
    reaped = []
    folder = running_dir(uri)
    for entry in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(entry.read_text())
            if _owner_alive(record):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: never reap on a guess
        run_id = entry.stem
        with contextlib.suppress(MlflowException):
            client = mlflow.MlflowClient(uri)
            if retry(client.get_run, run_id).info.status == "RUNNING":
                retry(client.set_terminated, run_id, status="KILLED")
                reaped.append(run_id)
        entry.unlink(missing_ok=True)
    return reaped


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration of the block."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (joblib workers): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- runs


def data_hash(cfg: Config) -> str:
    return cfg.dataset.content_hash()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: Config, extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {"data_sha256": data_hash(cfg), "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name}
    # The run's user: the login on a tracking server with accounts, else the local user (MLflow's own default).
    tags["mlflow.user"] = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        tags["dvc"] = "true"
    tags.update(extra or {})
    return {k: redact(str(v)) for k, v in tags.items()}


def default_run_name(cfg: Config) -> str:
    """What a run is called unless ``tracking.run_name`` says: the DVC experiment's name under ``dvc exp run``,
    else what usually differs between runs (``adam-lr0.001-bs32``), not one of MLflow's random names."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    t = cfg.train
    name = f"{cfg.optimizer.name}-lr{cfg.optimizer.learning_rate * t.lr_scale:g}-bs{t.batch_size}"
    if t.epochs != 1:
        name += f"-e{t.epochs}"
    return name if cfg.dataset.name == "mnist" else f"{cfg.dataset.name}-{name}"


def config_params(cfg: Config) -> dict[str, str]:
    """Every config value as a param with a dotted key (``optimizer.name``), secrets masked."""
    return {k: str(v) for k, v in flatten(redact_tree(to_dict(cfg))).items()}


@contextlib.contextmanager
def start_run(
    cfg: Config,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Create (or, with ``run_id``, reopen) a run and make it active; end it FINISHED, FAILED or KILLED."""
    with sigterm_raises():
        experiment_id = setup(cfg.tracking)
        uri = mlflow.get_tracking_uri()
        reap_orphans(uri)
        client = mlflow.MlflowClient(uri)
        fresh = run_id is None
        if run_id is None:
            all_tags = run_tags(cfg, tags)
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            name = run_name or cfg.tracking.run_name or default_run_name(cfg)
            run_id = create_run(client, experiment_id, redact(name), all_tags)
        status: str | None = "FAILED"
        try:
            record_add(uri, run_id)
            try:
                run = retry(mlflow.start_run, run_id=run_id)
            except MlflowException as exc:
                if fresh:
                    raise
                status = None  # not ours to end: the run could not be reopened at all
                raise DataError(f"MLflow run {run_id} cannot be reopened in {redact(uri)}: {exc.message}") from None
            if fresh:
                retry(mlflow.log_params, config_params(cfg))
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, Terminated):
            status = "KILLED"
            raise
        finally:
            if status is not None:
                active = mlflow.active_run()
                if active is not None and active.info.run_id == run_id:
                    retry(mlflow.end_run, status=status)
                else:
                    retry(client.set_terminated, run_id, status=status)
            record_remove(uri, run_id)  # only after the run has ended


def active() -> bool:
    return mlflow.active_run() is not None


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    if active():
        retry(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id)


def log_artifact(path: Path | str, artifact_path: str | None = None) -> None:
    if active():
        retry(mlflow.log_artifact, str(path), artifact_path)


def log_dataset(cfg: Config, x: Any, y: Any, split: str, context: str) -> None:
    """Record the data a run used as an MLflow dataset input (the runs list's Dataset column): named
    ``<dataset>-<split>``, its digest from the content hashes of the verified files and of the preparing
    code, with the subset; its source the processed file."""
    if not active():
        return
    from mlflow.data.numpy_dataset import from_numpy

    from pipeline.closure import source_hash

    subset = cfg.train.subset if split == "train" else None
    name = f"{cfg.dataset.name}-{split}" + (f"[:{subset}]" if subset else "")
    made_by = source_hash("pipeline.preprocess")  # the same content, prepared by other code, is other data
    digest = hashlib.sha256(f"{cfg.dataset.content_hash()}:{made_by}:{split}:{subset}".encode()).hexdigest()[:16]
    source = str((Path(cfg.paths.processed_dir) / f"{split}.npz").resolve())
    with warnings.catch_warnings():  # MLflow registers two local-file source types and says so on each call
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = from_numpy(features=x, targets=y, source=source, name=name, digest=digest)
    retry(mlflow.log_input, dataset, context=context)


def set_tags(tags: dict[str, str]) -> None:
    if active():
        retry(mlflow.set_tags, {k: redact(str(v)) for k, v in tags.items()})


# --------------------------------------------------------------------------- run records: DVC outputs -> runs


@dataclass(frozen=True)
class RunRecord:
    """What a stage leaves for later stages and for people: which MLflow run and logged model it made."""

    run_id: str
    experiment_id: str
    model_id: str | None = None
    train_run_id: str | None = None  # for an evaluation: the training run it evaluated

    def write(self, path: Path | str) -> None:
        write_json(path, {k: v for k, v in self.__dict__.items() if v is not None})

    @classmethod
    def read(cls, path: Path | str) -> RunRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data.get("run_id"), str):
                raise ValueError("no run_id")
            return cls(**{k: data.get(k) for k in ("run_id", "experiment_id", "model_id", "train_run_id")})
        except FileNotFoundError:
            raise DataError(
                f"{path}: not found; it names the MLflow run of the train stage (dvc repro train)"
            ) from None
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not a valid run record ({exc})") from None


def record_of(run: mlflow.ActiveRun, model_id: str | None = None, train_run_id: str | None = None) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.experiment_id, model_id, train_run_id)


@contextlib.contextmanager
def evaluation_run(cfg: Config, trained: RunRecord) -> Iterator[mlflow.ActiveRun]:
    """The run an evaluation logs into: the training run while it holds no evaluation yet (one run per
    fresh pipeline execution), else a new run, child of the training run, so finished history stays as it was."""
    setup(cfg.tracking)
    client = mlflow.MlflowClient()
    try:
        train_run = retry(client.get_run, trained.run_id)
    except MlflowException as exc:
        raise DataError(
            f"MLflow run {trained.run_id} (from {cfg.paths.run_info}) is not in "
            f"{redact(tracking_uri(cfg.tracking))}: {exc.message}; rerun the train stage (dvc repro -f train)"
        ) from None
    if train_run.info.status == "FINISHED" and "test_accuracy" not in train_run.data.metrics:
        with start_run(cfg, run_id=trained.run_id) as run:
            yield run
        return
    tags = {"evaluates_run_id": trained.run_id, "evaluation": "re-evaluation"}
    if trained.model_id:
        tags["model_id"] = trained.model_id
    name = f"{train_run.info.run_name or trained.run_id[:8]}-eval"
    with start_run(cfg, parent_run_id=trained.run_id, tags=tags, run_name=name) as run:
        yield run


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tracking uri`` prints the store the pipeline logs to (``tracking.uri`` of
    params.yaml, or ``$MLFLOW_TRACKING_URI``); ``champion`` prints the registry's champion model URI
    (``models:/mnist-cnn@champion``); ``ui [mlflow ui options]`` opens the MLflow UI over the store
    (``make ui``), with the same artifact folder; ``serve [options]`` serves the champion
    (``make serve``). So the store and the model's name are declared once, in the config."""
    import sys

    from pipeline.config import load_params
    from pipeline.errors import fail, user_errors

    args = sys.argv[1:] if argv is None else argv
    with user_errors():
        cfg = load_params(project_root() / "params.yaml")
    uri, champion = tracking_uri(cfg.tracking), f"models:/{cfg.registry.name}@{cfg.registry.alias}"
    if args[:1] == ["uri"]:
        print(uri)
    elif args[:1] == ["champion"]:
        print(champion)
    elif args[:1] == ["serve"]:
        os.environ["MLFLOW_TRACKING_URI"] = uri  # else MLflow looks for ./mlflow.db wherever this runs
        os.execvp("mlflow", ["mlflow", "models", "serve", "-m", champion, "--env-manager", "local", *args[1:]])
    elif args[:1] == ["ui"] and is_server(uri):
        print(f"MLflow UI: {uri}/#/experiments?workflowType=machine_learning (the tracking server serves it)")
    elif args[:1] == ["ui"]:
        host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
        port = args[args.index("--port") + 1] if "--port" in args else "5000"
        # The UI opens on its GenAI view until told otherwise; this link (once) sets the model-training view.
        print(f"MLflow UI: http://{host}:{port}/#/experiments?workflowType=machine_learning", flush=True)
        artifacts = artifact_location(uri)
        extra = ["--default-artifact-root", artifacts] if artifacts else []
        os.execvp("mlflow", ["mlflow", "ui", "--backend-store-uri", uri, *extra, *args[1:]])
    else:
        fail("usage: python -m pipeline.tracking uri | champion | ui [mlflow ui options] | serve [options]")


if __name__ == "__main__":
    main()
