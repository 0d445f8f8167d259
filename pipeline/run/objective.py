"""What a job returns to Hydra's sweeper, and the rule that a tuner never chooses on the test split.

Consumes: the typed config, the fit's per-epoch history and the test metrics. Produces: the objective (a
float a sweeper such as Optuna maximises), or a :class:`~pipeline.core.errors.ConfigError` before any work
when a tuner has no validation split to choose on.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.core.errors import ConfigError, DataError


def is_tuner(sweeper: str) -> bool:
    """A sweeper that chooses values from the results (Optuna's), unlike the basic grid."""
    return bool(sweeper) and "BasicSweeper" not in sweeper


def check_tuner(cfg: Config, sweeper: str) -> None:
    """A tuner chooses on the validation split, never on the test split: without one it is refused, before
    any work."""
    if is_tuner(sweeper) and cfg.train.validation_split == 0:
        raise ConfigError(
            f"train.validation_split: 0.0 with the sweeper {sweeper.rsplit('.', 1)[-1]}; a tuner chooses on the "
            "validation split, never the test split: set train.validation_split (e.g. 0.1)"
        )


def objective(cfg: Config, history: dict[str, list[float]], test_metrics: dict[str, float]) -> float:
    """What a sweeper maximises: with a validation split, the last epoch's validation value of the headline
    metric (``val_`` + ``metrics[0]``); without one (a plain run or a grid, which choose nothing from it: see
    :func:`check_tuner`), the test accuracy."""
    if cfg.train.validation_split > 0:
        key = f"val_{cfg.metric.value}"
        if not history.get(key):
            raise DataError(f"the fit logged no {key!r} (logged: {', '.join(sorted(history)) or 'nothing'})")
        return float(history[key][-1])
    return float(test_metrics["test_accuracy"])
