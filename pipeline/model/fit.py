"""Fitting the configured network on the processed training split, and saving it.

Consumes: ``paths.processed_dir``/train.npz and the ``model``, ``optimizer``, ``train``, ``metrics`` and ``seed``
config. Produces: ``paths.model`` (Keras format), ``paths.history`` (per-epoch metrics) and ``paths.steps`` (the
training curve: loss and every metric of ``metrics`` every ``train.log_every`` steps; ``auto``: at least 20
points, :func:`resolve_log_every`), each written atomically, and a :class:`TrainResult`. :func:`fit` knows nothing of MLflow: observers (:class:`Observer`, such as
:class:`pipeline.tracking.MetricsLogger`) receive the same curve points and epoch metrics.

A killed fit resumes: Keras' BackupAndRestore keeps weights and optimizer state every ``train.backup_every``
steps under ``paths.backup_dir/<config hash>``; a rerun with the same config restores them (Keras replays the
interrupted epoch from its first batch) and removes them when done. Two trainings of the same config at the
same time never share a backup folder (a lock per folder).

``train.deterministic`` turns on TensorFlow's op determinism for the fit, and only for it: the same config and
seed give the same numbers, on a GPU too, and a later job in the same process (an in-process sweep) starts
without it. ``train.strategy=mirrored`` trains one replica per device (``tf.distribute.MirroredStrategy`` over
the local GPUs, or ``train.devices``); the model is built and compiled in the strategy's scope and
``train.batch_size`` is the global batch. Naming more ``/cpu:N`` devices than the machine has splits its CPU
into logical devices, which must happen before TensorFlow first touches a device (a fresh process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.config import Config, Precision, Strategy, TrainConfig, Verbosity, config_hash
from pipeline.config.schema import LRSchedule
from pipeline.core.errors import ConfigError, naming
from pipeline.core.files import atomic_path, exclusive_lock, remove, sha256_file, user_cache_dir, write_json
from pipeline.core.timing import Timer
from pipeline.data.formats import load_split
from pipeline.model import patches
from pipeline.model.runtime import import_tensorflow

# TensorFlow (4-5 s to import) is imported where used, so a bad params.yaml is reported at once.
if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)
#: Integer labels: the one right loss (categorical losses need one-hot labels: the seed's trap).
LOSS = "sparse_categorical_crossentropy"
#: Config sections that make two trainings the same training (and share a resumable backup).
TRAINING_SECTIONS = ("dataset", "model", "optimizer", "train", "metrics", "seed")


class Observer(Protocol):
    """Receives a fit's progress: every ``train.log_every`` steps the running loss and metrics (the curve),
    and each epoch's metrics (validation ones included) with its wall time."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_epoch(self, epoch: int, metrics: dict[str, float], seconds: float) -> None: ...


@dataclass
class TrainResult:
    model: keras.Model
    model_path: Path
    history_path: Path
    steps_path: Path  # the training curve: every train.log_every steps
    parameters: int
    samples: int
    train_seconds: float  # wall time of model.fit
    example: np.ndarray  # one training input and the model's output for it: the logged model's signature
    example_output: np.ndarray
    model_sha256: str  # the saved file's content: what evaluate, the gate and predict check they score
    inputs: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # the training data (x, y) it fitted
    history: dict[str, list[float]] = field(default_factory=dict)
    precision: str = "float32"
    deterministic: bool = False  # whether TensorFlow's op determinism was on during the fit
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: import, data, build, fit, save
    strategy: str = "default"
    devices: list[str] = field(default_factory=list)  # the replicas' devices (one per replica); [] by default


#: oneDNN's instruction-set caps (``ONEDNN_MAX_CPU_ISA``) that leave it no bfloat16 arithmetic. Under them
#: TensorFlow still sees AVX512_BF16 and sends bfloat16 convolutions to oneDNN, which refuses them ("could not
#: create a primitive descriptor"): a CPU so capped is, for ``precision: auto``, a CPU without bfloat16.
NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_has_bf16(env: dict[str, str] | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic (AVX512_BF16 or AMX) that oneDNN may use: not under an
    ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``) of :data:`NO_BF16_ISAS`."""
    env = dict(os.environ) if env is None else env
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in NO_BF16_ISAS:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: How much faster bfloat16's convolution must be than float32's for ``precision: auto`` to pick it: a margin
#: over the probe's noise, so a CPU where the two are close keeps float32's accuracy.
BF16_MARGIN = 1.2


def bf16_pays(seconds: dict[str, float], margin: float = BF16_MARGIN) -> bool:
    """Whether the probe's timings (dtype -> seconds of the same work) make bfloat16 worth it."""
    return seconds["bfloat16"] * margin <= seconds["float32"]


def probe_conv_seconds(repeats: int = 5) -> dict[str, float]:
    """The best of ``repeats`` timings of the seed network's widest convolution (a batch of 128, 28x28, 32 -> 64
    channels, forward and backward), in float32 and in bfloat16, on this CPU's kernels."""
    import tensorflow as tf

    seconds = {}
    x = tf.random.stateless_uniform((128, 28, 28, 32), seed=(1, 2), dtype=tf.float32)
    w = tf.Variable(tf.random.stateless_uniform((3, 3, 32, 64), seed=(3, 4), dtype=tf.float32))
    for dtype in ("float32", "bfloat16"):

        @tf.function
        def step(x: Any, dtype: str = dtype) -> Any:
            with tf.GradientTape() as tape:
                y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(w, dtype), 1, "SAME")
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            return tape.gradient(loss, w)

        step(x).numpy()  # traced, and its kernels chosen, before the clock
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            step(x).numpy()
            best = min(best, time.perf_counter() - start)
        seconds[dtype] = best
    return seconds


def bf16_is_faster() -> bool:
    """Whether bfloat16 trains faster than float32 on this CPU: AVX512_BF16 alone does not say (on an AMD EPYC its
    matmul peak is twice float32's, on an Intel Xeon without AMX about half: docs/performance.md), so a 1 s probe
    decides, once per CPU, oneDNN cap and TensorFlow version (remembered in the per-user cache)."""
    import tensorflow as tf

    if not cpu_has_bf16():
        return False
    cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    key = hashlib.sha256(f"{cpu}|{cap}|{tf.__version__}".encode()).hexdigest()[:16]
    record = user_cache_dir() / "precision" / f"{key}.json"
    try:
        return bool(json.loads(record.read_text())["bf16_faster"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    seconds = probe_conv_seconds()
    faster = bf16_pays(seconds)
    log.info("precision auto: bfloat16 %.1f ms, float32 %.1f ms a step: %s", seconds["bfloat16"] * 1e3,
             seconds["float32"] * 1e3, "mixed_bfloat16" if faster else "float32")  # fmt: skip
    with contextlib.suppress(OSError):
        write_json(record, {"cpu": cpu.split(":")[-1].strip(), "cap": cap, "tensorflow": tf.__version__,
                            "seconds": seconds, "bf16_faster": faster})  # fmt: skip
    return faster


def resolve_precision(train: TrainConfig) -> str:
    """``auto``: mixed_float16 on a GPU; on a CPU, mixed_bfloat16 where it has bfloat16 arithmetic
    (:func:`cpu_has_bf16`) and it is faster there (:func:`bf16_is_faster`), float32 otherwise: on an AVX2-only
    CPU bfloat16 has no oneDNN kernels, and TensorFlow's own emulate it at a multiple of float32's step time
    (docs/performance.md, ``precision-isa-*.json``)."""
    if train.precision is not Precision.auto:
        return train.precision.value
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if bf16_is_faster() else "float32"


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


#: ``train.log_every: auto`` gives a run of this many steps or more at least this many curve points.
CURVE_POINTS = 20


def epoch_steps(train: TrainConfig, samples: int) -> int:
    """Batches per epoch: one pass over the training samples, ceil(fitted / batch), the fitted samples being
    what ``validation_split`` leaves (as Keras splits: the first floor(samples x (1 - split))), or fewer:
    ``train.steps_per_epoch``. That is a cap, not a demand: a subset with fewer batches (``train=fast
    train.subset=300``, a smoke run of the fast profile) trains on all of them, where Keras would stop at the
    end of the data with a warning while the schedule and the curve counted steps that never run."""
    fitted = math.floor(samples * (1.0 - train.validation_split))
    one_pass = math.ceil(fitted / train.batch_size)
    if train.steps_per_epoch is None:
        return one_pass
    return min(train.steps_per_epoch, one_pass)


def resolve_log_every(train: TrainConfig, samples: int) -> int:
    """``train.log_every`` in steps. An integer is itself; ``auto`` gives at least :data:`CURVE_POINTS` points
    to a run of that many steps or more (every step to a shorter one), from the run's steps: epochs x
    :func:`epoch_steps`. Always a multiple of ``train.steps_per_execution``: Keras calls batch callbacks once
    per execution, so a point between two is never seen."""
    if train.log_every != "auto":
        return int(train.log_every)
    steps = train.epochs * epoch_steps(train, samples)
    spe = train.steps_per_execution
    return max(spe, (steps // CURVE_POINTS) // spe * spe)


def learning_rate(
    train: TrainConfig, peak: float, steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate for a fit of ``steps`` steps in all: ``peak`` (the configured rate times
    ``train.lr_scale``) for ``constant``; for ``cosine``, Keras' CosineDecay (a built-in, so the saved model
    loads without this package): from 0 up to ``peak`` in a straight line over round(``train.warmup`` x
    ``steps``) steps, then down to 0 along half a cosine at the last step. Short fits converge further with it:
    a high rate while far from a minimum, a small one to settle at the end."""
    if train.lr_schedule is LRSchedule.constant:
        return peak
    import keras

    warm = round(train.warmup * steps)
    if warm == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - warm), warmup_target=peak, warmup_steps=warm
    )


def fit_verbosity(train: TrainConfig) -> int:
    if train.verbose is Verbosity.auto:
        return 1 if sys.stdout.isatty() else 2  # a progress bar for people, one line per epoch for logs
    return {Verbosity.silent: 0, Verbosity.bar: 1, Verbosity.line: 2}[train.verbose]


def step_of(epoch: int, batch: int, steps_per_epoch: int) -> int:
    """The global training step (1-based) after ``batch`` (0-based) of ``epoch`` (0-based)."""
    return epoch * steps_per_epoch + batch + 1


@cache
def step_curve() -> type:
    """A Keras callback that, every ``every`` steps (and at each epoch's last), appends (step, epoch, loss, each
    metric) to a CSV file (the training curve, a DVC plot) and hands the same point to the observers; at each
    epoch's end it hands them the epoch's metrics. With ``progress`` it logs a line with the rate and the time
    left: a one-epoch run still has a curve, and a log shows how training goes. The metric names are the
    config's (``metrics``), as Keras logs them."""
    import keras

    class StepCurve(keras.callbacks.Callback):
        def __init__(
            self, path: Path, every: int, names: Sequence[str], observers: Sequence[Observer], progress: bool
        ) -> None:
            super().__init__()
            self.path, self.every, self.progress = Path(path), every, progress
            self.names, self.observers = ["loss", *names], list(observers)

        def on_train_begin(self, logs: Any = None) -> None:
            self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in on_train_end)
            self.file.write(",".join(["step", "epoch", *self.names]) + "\n")
            self.steps, self.epochs = int(self.params.get("steps") or 0), int(self.params.get("epochs") or 1)
            self.start, self.first_step = time.perf_counter(), 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch, self.epoch_start = epoch, time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = step_of(self.epoch, batch, self.steps)
            if not self.first_step:  # a resumed fit starts past step 1
                self.first_step, self.start = step, time.perf_counter()
            if step % self.every and batch + 1 != self.steps:
                return
            logs = logs or {}
            missing = [n for n in self.names if n not in logs]
            if missing:  # a metric Keras logs under another name: a NaN curve would hide it
                raise RuntimeError(f"Keras logged {sorted(logs)}, not {missing}: the step curve cannot follow it")
            point = {n: float(logs[n]) for n in self.names}
            self.file.write(",".join([str(step), str(self.epoch), *(f"{v:.6f}" for v in point.values())]) + "\n")
            self.file.flush()
            for observer in self.observers:
                observer.on_step(step, point)
            if self.progress:
                total, done = self.steps * self.epochs, step - self.first_step + 1
                per_step = (time.perf_counter() - self.start) / done
                shown = ", ".join(f"{n} {v:.4f}" for n, v in point.items())
                log.info(
                    "epoch %d/%d step %d/%d (%d%%): %s, %.1f ms/step, %.0f s left",
                    self.epoch + 1, self.epochs, step, total, 100 * step // max(total, 1), shown,
                    1000 * per_step, per_step * (total - step),
                )  # fmt: skip

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            for observer in self.observers:
                observer.on_epoch(epoch, metrics, time.perf_counter() - self.epoch_start)

        def on_train_end(self, logs: Any = None) -> None:
            self.file.close()

    return StepCurve


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[bool]:
    """TensorFlow's op determinism on for the block when ``enabled`` (process-wide, so it is turned off again
    after, unless it was on before); yields whether it is on inside the block."""
    import tensorflow as tf

    before = patches.op_determinism_enabled()
    if enabled and not before:
        tf.config.experimental.enable_op_determinism()
    elif before and not enabled:
        patches.disable_op_determinism()
    try:
        yield patches.op_determinism_enabled()
    finally:
        now = patches.op_determinism_enabled()
        if now and not before:
            patches.disable_op_determinism()
        elif before and not now:
            tf.config.experimental.enable_op_determinism()


def distribution(t: TrainConfig) -> tf.distribute.Strategy | None:
    """``train.strategy``'s tf.distribute strategy; None for TensorFlow's default (one device)."""
    if t.strategy is Strategy.default:
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


def compile_model(cfg: Config, precision: str, steps: int | None = None) -> keras.Model:
    """The built, compiled model; ``steps`` (the fit's steps in all) sizes ``train.lr_schedule``, which needs
    them unless it is ``constant``."""
    import keras

    from pipeline.model.architectures import build_model, build_optimizer

    keras.mixed_precision.set_dtype_policy(precision)
    model = build_model(cfg.model, cfg.dataset.num_classes, cfg.dataset.input_shape)
    optimizer = build_optimizer(cfg.optimizer, cfg.train.lr_scale)
    if cfg.train.lr_schedule is not LRSchedule.constant:
        if steps is None:
            raise ValueError(f"train.lr_schedule={cfg.train.lr_schedule.value} needs the fit's number of steps")
        optimizer.learning_rate = learning_rate(cfg.train, float(optimizer.learning_rate), steps)
    model.compile(
        optimizer=optimizer,
        loss=LOSS,
        metrics=[m.value for m in cfg.metrics],
        steps_per_execution=cfg.train.steps_per_execution,
    )
    return model


def seeded_model(
    cfg: Config, strategy: tf.distribute.Strategy | None = None, steps: int | None = None
) -> tuple[keras.Model, str]:
    """The compiled model as a training of ``steps`` steps (for the learning-rate schedule) starts from it,
    and its precision: Keras seeded with ``cfg.seed``, built in ``strategy``'s scope (variables mirrored on
    every replica). Op determinism is the caller's (:func:`op_determinism`)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    precision = resolve_precision(cfg.train)
    with strategy.scope() if strategy else contextlib.nullcontext():
        return compile_model(cfg, precision, steps), precision


def fit(cfg: Config, observers: Sequence[Observer] = ()) -> TrainResult:
    """Fit the model described by ``cfg`` and save it to ``cfg.paths.model``; ``observers`` see its progress."""
    timer = Timer("train")
    import_tensorflow()

    timer.mark("import tensorflow")
    paths, t = cfg.paths, cfg.train
    remove(paths.model, paths.history, paths.steps)  # a failed run must not leave the previous model looking current
    x, y = load_split(paths.processed_dir, "train", cfg.dataset.num_classes)
    if t.subset is not None:
        x, y = x[: t.subset], y[: t.subset]
    timer.mark("load data")
    strategy = distribution(t)  # first: splitting the CPU must precede any use of a device
    with op_determinism(t.deterministic) as deterministic:
        return _fit(cfg, x, y, strategy, deterministic, timer, observers)


def _fit(
    cfg: Config, x: np.ndarray, y: np.ndarray, strategy: tf.distribute.Strategy | None, deterministic: bool,
    timer: Timer, observers: Sequence[Observer] = (),
) -> TrainResult:  # fmt: skip
    import keras

    paths, t = cfg.paths, cfg.train
    per_epoch = epoch_steps(t, len(x))
    model, precision = seeded_model(cfg, strategy, t.epochs * per_epoch)
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
            patches.fast_kernels(model, enabled=t.fast_kernels and strategy is None),
        ):
            hist = model.fit(
                x,
                y,
                batch_size=t.batch_size,
                epochs=t.epochs,
                steps_per_epoch=per_epoch if t.steps_per_epoch else None,
                shuffle=t.shuffle,
                validation_split=t.validation_split,
                verbose=fit_verbosity(t),
                callbacks=[
                    atomic_backup_and_restore()(str(backup), save_freq=t.backup_every),
                    keras.callbacks.CSVLogger(str(history_tmp)),
                    step_curve()(
                        steps_tmp,
                        resolve_log_every(t, len(x)),
                        [m.value for m in cfg.metrics],
                        observers,
                        progress=fit_verbosity(t) == 2,
                    ),
                ],
            )
        train_seconds = time.perf_counter() - start
    timer.mark("fit")
    with atomic_path(paths.model) as model_tmp, naming(paths.model):  # a full disk: one line naming the model
        model.save(model_tmp)
        model_sha256 = sha256_file(model_tmp)
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
        example_output=np.asarray(model(x[:1], training=False)),
        model_sha256=model_sha256,
        deterministic=deterministic,
        inputs=(x, y),
        history={k: [float(v) for v in vs] for k, vs in hist.history.items()},
        precision=precision,
        timings=timer.phases(),
        strategy=t.strategy.value,
        devices=devices,
    )
