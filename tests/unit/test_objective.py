"""What a sweeper maximises: the headline metric on the validation split; a tuner never sees the test split."""

from __future__ import annotations

import pytest

from pipeline.config import compose, validate
from pipeline.core.errors import ConfigError
from pipeline.run.objective import check_tuner, objective

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def test_with_a_validation_split_the_objective_is_the_headline_metric_on_it():
    cfg = validate(compose(["train.validation_split=0.1", "metrics=[sparse_categorical_accuracy,accuracy]"]))
    history = {"val_sparse_categorical_accuracy": [0.5, 0.8], "val_accuracy": [0.1, 0.2]}
    assert objective(cfg, history, {"test_accuracy": 0.99}) == 0.8  # never the test accuracy


def test_a_tuner_without_a_validation_split_is_refused_and_a_grid_is_not():
    cfg = validate(compose())
    with pytest.raises(ConfigError, match=r"never the test split: set train\.validation_split"):
        check_tuner(cfg, OPTUNA)
    check_tuner(cfg, BASIC)
    check_tuner(cfg, "")  # a single run
    assert objective(cfg, {}, {"test_accuracy": 0.97}) == 0.97  # what a plain run returns
    check_tuner(validate(compose(["train.validation_split=0.1"])), OPTUNA)
