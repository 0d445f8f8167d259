"""Stage ``train``: fit the seed's Basic_CNN on the processed training split and save it.

Consumes: ``paths.processed_dir``/train.npz and the ``model``, ``optimizer``, ``train``, ``loss``,
``metrics`` and ``seed`` config. Produces: ``paths.model`` (Keras format) and ``paths.history`` (per-epoch
metrics, a DVC plot). :func:`train` is pure with respect to MLflow: it returns what it computed, and its
caller (this module's :func:`main`, or the Hydra job in :mod:`pipeline.run`) logs it with
:func:`log_training`: per-epoch metrics (through a Keras callback the caller passes in), the training
time, the parameter count and the model (``mlflow.keras.log_model`` with a signature, so ``mlflow.pyfunc``
serves it). :func:`main` also writes ``paths.run_info``, the MLflow run and logged model that evaluate reads.

A killed fit resumes: Keras' BackupAndRestore keeps weights and optimizer state every
``train.backup_every`` steps under ``paths.backup_dir/<config hash>``; a rerun with the same config
restores them (Keras replays the interrupted epoch from its first batch) and removes them when done. Two
trainings of the same config at the same time never share a backup folder (a lock per folder).
``train.deterministic`` turns on TensorFlow's op determinism: the same config and seed give the same
numbers, on a GPU too.

``train.strategy=mirrored`` trains one replica per device (``tf.distribute.MirroredStrategy`` over the local
GPUs, or ``train.devices``); the model is built and compiled in the strategy's scope and ``train.batch_size``
is the global batch, split across the replicas. Naming more ``/cpu:N`` devices than the machine has splits
its CPU into logical devices, which must happen before TensorFlow first touches a device (a fresh process).

Run: ``python -m pipeline.train`` (reads params.yaml), or ``dvc repro train``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import Config, TrainConfig, config_hash, load_params
from pipeline.data import load_split
from pipeline.errors import ConfigError, run_cli
from pipeline.files import atomic_path, exclusive_lock, remove, write_json
from pipeline.kernels import fast_kernels
from pipeline.runtime import import_tensorflow
from pipeline.timing import Timer

# TensorFlow (4-5 s to import) and MLflow (1.5 s) are imported where used, so a bad params.yaml is
# reported at once, before either loads.
if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)
MODEL_NAME = "model"
#: Config sections that make two trainings the same training (and share a resumable backup).
TRAINING_SECTIONS = ("dataset", "model", "optimizer", "train", "loss", "metrics", "seed")


@dataclass
class TrainResult:
    model: keras.Model
    model_path: Path
    history_path: Path
    steps_path: Path  # the training curve: every train.log_every steps
    parameters: int
    samples: int
    train_seconds: float  # wall time of model.fit
    example: np.ndarray  # one training input: the logged model's signature
    inputs: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # the training data (x, y) it fitted
    history: dict[str, list[float]] = field(default_factory=dict)
    precision: str = "float32"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: import, data, build, fit, save
    strategy: str = "default"
    devices: list[str] = field(default_factory=list)  # the replicas' devices (one per replica); [] by default


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(train: TrainConfig) -> str:
    """``auto``: mixed_float16 on a GPU, mixed_bfloat16 on CPUs with AVX512_BF16/AMX, float32 otherwise."""
    if train.precision != "auto":
        return train.precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


@cache
def atomic_backup_and_restore() -> type:
    """Keras' BackupAndRestore, with backups renamed into place: a kill during a save leaves the previous one."""
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            folder = Path(self.backup_dir)
            folder.mkdir(parents=True, exist_ok=True)
            tmp_weights = folder / "partial.weights.h5"  # Keras insists on the .weights.h5 suffix
            self.model.save_weights(str(tmp_weights), overwrite=True)
            os.replace(tmp_weights, self._weights_path)
            write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})

    return AtomicBackupAndRestore


@contextlib.contextmanager
def backup_folder(root: Path | str, name: str) -> Iterator[Path]:
    """``root/name``, held under a lock for the block; if another live training holds it (the same config
    training twice at once), the first free ``name-1``, ``name-2``... A killed training's lock dies with it,
    so its rerun finds ``name`` free and resumes from it."""
    root = Path(root)
    for i in range(1000):
        folder = root / (name if i == 0 else f"{name}-{i}")
        with exclusive_lock(root / f"{folder.name}.lock", wait=False) as held:
            if held:
                yield folder
                return
    raise RuntimeError(f"{root}: 1000 trainings of one config at once?")


def fit_verbosity(train: TrainConfig) -> int:
    if train.verbose == "auto":
        return 1 if sys.stdout.isatty() else 2  # a progress bar for people, one line per epoch for logs
    return int(train.verbose)


def step_of(epoch: int, batch: int, steps_per_epoch: int) -> int:
    """The global training step (1-based) after ``batch`` (0-based) of ``epoch`` (0-based)."""
    return epoch * steps_per_epoch + batch + 1


@cache
def step_curve() -> type:
    """A Keras callback that, every ``every`` steps, appends (step, epoch, loss, accuracy) to a CSV file (the
    training curve, a DVC plot) and, when ``progress``, logs a line with the rate and the time left: a
    one-epoch run still has a curve, and a log shows how training goes."""
    import keras

    class StepCurve(keras.callbacks.Callback):
        def __init__(self, path: Path, every: int, progress: bool) -> None:
            super().__init__()
            self.path, self.every, self.progress = Path(path), every, progress

        def on_train_begin(self, logs: Any = None) -> None:
            self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in on_train_end)
            self.file.write("step,epoch,loss,accuracy\n")
            self.steps, self.epochs = int(self.params.get("steps") or 0), int(self.params.get("epochs") or 1)
            self.start, self.first_step = time.perf_counter(), 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = step_of(self.epoch, batch, self.steps)
            if not self.first_step:  # a resumed fit starts past step 1
                self.first_step, self.start = step, time.perf_counter()
            if step % self.every and batch + 1 != self.steps:
                return
            logs = logs or {}
            loss, accuracy = float(logs.get("loss", float("nan"))), float(logs.get("accuracy", float("nan")))
            self.file.write(f"{step},{self.epoch},{loss:.6f},{accuracy:.6f}\n")
            self.file.flush()
            if self.progress:
                total, done = self.steps * self.epochs, step - self.first_step + 1
                per_step = (time.perf_counter() - self.start) / done
                log.info(
                    "epoch %d/%d step %d/%d (%d%%): loss %.4f accuracy %.4f, %.1f ms/step, %.0f s left",
                    self.epoch + 1, self.epochs, step, total, 100 * step // max(total, 1), loss, accuracy,
                    1000 * per_step, per_step * (total - step),
                )  # fmt: skip

        def on_train_end(self, logs: Any = None) -> None:
            self.file.close()

    return StepCurve


def distribution(t: TrainConfig) -> tf.distribute.Strategy | None:
    """``train.strategy``'s tf.distribute strategy; None for TensorFlow's default (one device)."""
    if t.strategy == "default":
        return None
    import tensorflow as tf

    cpus = [int(d.rpartition(":")[2]) for d in t.devices or [] if "cpu" in d.lower()]
    if cpus and max(cpus) >= 1:
        split_cpu(max(cpus) + 1)
    return tf.distribute.MirroredStrategy(devices=t.devices)


def split_cpu(count: int) -> None:
    """Make the CPU ``count`` logical devices (/cpu:0.../cpu:count-1), as Keras' and TensorFlow's own tests
    fake several devices; only possible before TensorFlow initialises its devices."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    if len(tf.config.get_logical_device_configuration(cpu) or [None]) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise ConfigError(
            f"train.devices: {count} logical CPUs need a process where TensorFlow has not yet used a device "
            "(run this training in a process of its own)"
        ) from None


def compile_model(cfg: Config, precision: str) -> keras.Model:
    import keras

    from pipeline.model import build_model, build_optimizer

    keras.mixed_precision.set_dtype_policy(precision)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer, cfg.train.lr_scale),
        loss=cfg.loss,
        metrics=list(cfg.metrics),
        steps_per_execution=cfg.train.steps_per_execution,
    )
    return model


def seeded_model(cfg: Config, strategy: tf.distribute.Strategy | None = None) -> tuple[keras.Model, str]:
    """The compiled model as a training starts from it, and its precision: op determinism where
    ``train.deterministic`` asks, Keras seeded with ``cfg.seed``, built in ``strategy``'s scope (variables
    mirrored on every replica)."""
    import keras

    if cfg.train.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # process-wide; a no-op when already on
    keras.utils.set_random_seed(cfg.seed)
    precision = resolve_precision(cfg.train)
    with strategy.scope() if strategy else contextlib.nullcontext():
        return compile_model(cfg, precision), precision


def train(cfg: Config, callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Fit the model described by ``cfg`` and save it to ``cfg.paths.model``; ``callbacks`` join Keras' fit."""
    timer = Timer("train")
    import_tensorflow()
    import keras

    timer.mark("import tensorflow")
    paths, t = cfg.paths, cfg.train
    remove(paths.model, paths.history, paths.steps)  # a failed run must not leave the previous model looking current
    x, y = load_split(paths.processed_dir, "train", cfg.dataset.num_classes)
    if t.subset is not None:
        x, y = x[: t.subset], y[: t.subset]
    timer.mark("load data")
    strategy = distribution(t)  # first: splitting the CPU must precede any use of a device
    model, precision = seeded_model(cfg, strategy)
    devices = list(strategy.extended.worker_devices) if strategy else []
    if devices:
        log.info("%s: %d replicas (%s), global batch %d", t.strategy, len(devices), ", ".join(devices), t.batch_size)
    timer.mark("build model")
    with backup_folder(paths.backup_dir, config_hash(cfg, TRAINING_SECTIONS)) as backup:
        if backup.exists():
            log.warning("resuming an interrupted training from %s", backup)
        start = time.perf_counter()
        with (
            atomic_path(paths.history) as history_tmp,
            atomic_path(paths.steps) as steps_tmp,
            fast_kernels(model, enabled=t.fast_kernels and strategy is None),
        ):
            hist = model.fit(
                x,
                y,
                batch_size=t.batch_size,
                epochs=t.epochs,
                shuffle=t.shuffle,
                validation_split=t.validation_split,
                verbose=fit_verbosity(t),
                callbacks=[
                    atomic_backup_and_restore()(str(backup), save_freq=t.backup_every),
                    keras.callbacks.CSVLogger(str(history_tmp)),
                    step_curve()(steps_tmp, t.log_every, progress=fit_verbosity(t) == 2),
                    *callbacks,
                ],
            )
        train_seconds = time.perf_counter() - start
    timer.mark("fit")
    with atomic_path(paths.model) as model_tmp:
        model.save(model_tmp)
    timer.mark("save model")
    log.info("trained %d parameters on %d samples in %.1f s", model.count_params(), len(x), train_seconds)
    return TrainResult(
        model=model,
        model_path=Path(paths.model),
        history_path=Path(paths.history),
        steps_path=Path(paths.steps),
        parameters=model.count_params(),
        samples=len(x),
        train_seconds=train_seconds,
        example=x[:1],
        inputs=(x, y),
        history={k: [float(v) for v in vs] for k, vs in hist.history.items()},
        precision=precision,
        timings=timer.phases(),
        strategy=t.strategy,
        devices=devices,
    )


# --------------------------------------------------------------------------- logging, for the caller


def epoch_logger(log_every: int = 100) -> keras.callbacks.Callback:
    """A Keras callback logging to the active run: each epoch's metrics and wall time (step = epoch), and
    every ``log_every`` steps the running loss and accuracy as ``batch_loss``, ``batch_accuracy`` (step =
    the global training step: the curve of a one-epoch run)."""
    import_tensorflow()  # before Keras: the notices once, and without what Keras would import for nothing
    import keras

    from pipeline import tracking

    class EpochLogger(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.steps = int(self.params.get("steps") or 0)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch, self._start = epoch, time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = step_of(self.epoch, batch, self.steps)
            if step % log_every == 0 or batch + 1 == self.steps:
                logs = logs or {}
                tracking.log_metrics({f"batch_{k}": v for k, v in logs.items() if k in ("loss", "accuracy")}, step=step)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            tracking.log_metrics({**(logs or {}), "epoch_time_s": time.perf_counter() - self._start}, step=epoch)

    return EpochLogger()


def model_requirements() -> list[str]:
    """What serving the model needs, from the installed versions: MLflow's own inference of this
    list reloads the model in a subprocess and costs 6-8 s a run here."""
    from importlib import metadata

    reqs = []
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(model: keras.Model, example: np.ndarray, params: dict[str, str]) -> str:
    """Log the Keras model (with a signature) as the active run's one LoggedModel; return its model_id.

    The LoggedModel is created first, by itself (a retry finds it rather than making a second), then
    ``log_model`` fills it with the model's files, which is safe to repeat.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipeline import tracking

    run = mlflow.active_run()
    assert run is not None, "log_model needs an active run"
    client = mlflow.MlflowClient()

    def recover() -> Any:
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        return next((m for m in found if m.name == MODEL_NAME), None)

    logged = tracking.retry(
        mlflow.initialize_logged_model, name=MODEL_NAME, source_run_id=run.info.run_id, params=params,
        model_type="keras", recover=recover,
    )  # fmt: skip
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with pins_from_this_environment():
        tracking.retry(
            mlflow.keras.log_model, model, name=MODEL_NAME, signature=signature,
            pip_requirements=model_requirements(), model_id=logged.model_id,
        )  # fmt: skip
    return logged.model_id


@contextlib.contextmanager
def pins_from_this_environment() -> Iterator[None]:
    """Skip MLflow's check that ``pip_requirements`` match the installed packages, for the block.

    The check maps every module to its distribution by reading all installed distributions' file lists
    (``importlib_metadata.packages_distributions``): logging a trained model took 0.62-0.71 s with it and
    0.32-0.36 s without, here.
    :func:`model_requirements` reads its pins from this very environment, so the check cannot fire.
    MLflow offers no switch, so its module attribute is swapped and put back (none to swap: nothing done).
    """
    from mlflow.utils import environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:
        yield
        return
    setattr(environment, "warn_dependency_requirement_mismatches", lambda model_requirements: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(environment, "warn_dependency_requirement_mismatches", check)  # noqa: B010


def log_training(cfg: Config, result: TrainResult) -> str | None:
    """Log a training's result to the active run; return the logged model's id (None: no model logged)."""
    from pipeline import tracking

    if not tracking.active():
        return None
    tracking.log_metrics(
        {"train_time_s": result.train_seconds, "parameters": result.parameters, "train_samples": result.samples}
    )
    tags = {"precision": result.precision, "strategy": result.strategy, "replicas": str(len(result.devices) or 1)}
    if result.devices:
        tags["devices"] = ",".join(result.devices)
    tracking.set_tags(tags)
    tracking.log_dataset(cfg, *result.inputs, split="train", context="training")
    tracking.log_artifact(result.history_path, "reports")
    tracking.log_artifact(result.steps_path, "reports")
    if cfg.tracking.log_model:
        return log_model(result.model, result.example, tracking.config_params(cfg))
    return None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    timer = Timer("train")
    cfg = load_params()
    timer.mark("config")
    from pipeline import tracking

    timer.mark("import mlflow")
    remove(cfg.paths.run_info)
    with tracking.start_run(cfg) as run:
        timer.mark("open run")
        callbacks = [epoch_logger(cfg.train.log_every)]  # imports Keras, so TensorFlow
        timer.mark("import tensorflow")
        result = train(cfg, callbacks=callbacks)
        timer.mark("train")
        timer.add(result.timings, into="train")
        model_id = log_training(cfg, result)
        timer.mark("log to mlflow")
    tracking.record_of(run, model_id).write(cfg.paths.run_info)
    timer.mark("close run")
    timer.report()


if __name__ == "__main__":
    run_cli(main, fast_exit=True)
