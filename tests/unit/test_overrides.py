"""The Hydra app's command line is read as Hydra reads it, without Hydra's private parser."""

from __future__ import annotations

import pytest

from pipeline.run.overrides import hydra_arguments, prepare_argv

ARGVS = [
    [],
    ["optimizer=sgd", "train.subset=300"],
    ["-m", "optimizer=sgd,adam", "hydra/launcher=joblib"],
    ["--multirun", "hparams_search=optuna_lr"],
    ["--cfg", "job", "optimizer=sgd"],
    ["-c", "hydra", "--resolve"],
    ["--info"],
    ["-i", "defaults"],
    ["--help"],
    ["-cn", "config", "-cp", "conf", "seed=1"],
    ["--hydra-help"],
    ["-sc", "install=bash"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_command_line_parses_as_hydras_own_parser_does(argv):
    from hydra._internal.utils import get_args_parser  # the stock path, to compare with

    ours, theirs = vars(hydra_arguments().parse_args(argv)), vars(get_args_parser().parse_args(argv))
    assert {k: ours.get(k) for k in theirs} == theirs


def test_an_unknown_option_is_left_for_hydra_to_report():
    assert prepare_argv(["--no-such-option"]) == ["--no-such-option"]
