"""The registry gate against a real MLflow store: versions, the champion alias, tags, and concurrent evaluations.

The models are LoggedModels without weights (the gate reads only their evaluation's predictions), so the tests
need no training; the same code runs in the evaluate stage (tests/integration/test_dvc.py).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.config import RegistryConfig, TrackingConfig, compose, validate
from pipeline.tracking import registry
from tests.conftest import ROOT

LABELS = np.arange(1000) % 10


def registry_config(name: str) -> RegistryConfig:
    """conf/'s registry section (every default is there), for the registered model ``name``."""
    return dataclasses.replace(validate(compose()).registry, name=name)


def tracking_config(uri: str) -> TrackingConfig:
    """conf/'s tracking section, for the store ``uri``."""
    return dataclasses.replace(validate(compose()).tracking, uri=uri)


def predictions(accuracy: float, seed: int) -> np.ndarray:
    wrong = np.random.default_rng(seed).permutation(1000) < round((1 - accuracy) * 1000)
    return np.where(wrong, (LABELS + 1) % 10, LABELS)


def evaluated_model(uri: str, accuracy: float, seed: int) -> tuple[str, str, np.ndarray]:
    """A run with a READY LoggedModel and its evaluation's predictions: (model_id, run_id, predictions)."""
    from mlflow.entities import LoggedModelStatus

    experiment = tracking.setup(tracking_config(uri))
    pred = predictions(accuracy, seed)
    with mlflow.start_run(experiment_id=experiment) as run:
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        mlflow.MlflowClient().finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        registry.log_predictions(pred, LABELS)
    return model.model_id, run.info.run_id, pred


def run_gate(uri: str, cfg: RegistryConfig, accuracy: float, seed: int) -> registry.Decision:
    model_id, run_id, pred = evaluated_model(uri, accuracy, seed)

    def never(model_uri: str) -> np.ndarray:
        raise AssertionError("the champion's saved predictions should be used")

    return registry.gate(cfg, model_id, run_id, pred, LABELS, "digest-1", never)


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def champion_version(uri: str, name: str) -> str:
    return str(mlflow.MlflowClient(uri).get_model_version_by_alias(name, "champion").version)


def test_first_better_worse_equal_and_rerun(uri):
    cfg = registry_config("gate-cnn")
    first = run_gate(uri, cfg, 0.90, seed=1)
    assert first.promoted and first.reason == "no champion yet" and first.version == "1"

    better = run_gate(uri, cfg, 0.96, seed=2)
    assert better.promoted and better.champion_version == "1" and better.p_value < 0.05
    assert (better.accuracy, better.champion_accuracy) == (0.96, 0.90)

    worse = run_gate(uri, cfg, 0.93, seed=3)
    close = run_gate(uri, cfg, 0.962, seed=2)  # almost the same predictions as the champion: not significant
    assert not worse.promoted and worse.reason == "not more accurate"
    assert not close.promoted and close.p_value >= 0.05
    assert champion_version(uri, "gate-cnn") == better.version == "2"

    client = mlflow.MlflowClient(uri)
    version = client.get_model_version("gate-cnn", worse.version)
    assert version.tags["registry.promoted"] == "False" and version.tags["registry.champion_version"] == "2"
    assert float(version.tags["registry.p_value"]) == pytest.approx(worse.p_value)
    run = client.get_run(version.tags["registry.eval_run_id"])
    assert (
        run.data.tags["registry.version"] == worse.version and run.data.tags["registry.reason"] == "not more accurate"
    )


def test_re_gating_the_same_model_reuses_its_version_and_keeps_the_champion(uri):
    cfg = registry_config("gate-cnn")
    model_id, run_id, pred = evaluated_model(uri, 0.9, seed=1)
    first = registry.gate(cfg, model_id, run_id, pred, LABELS, "d", lambda u: pred)
    again = registry.gate(cfg, model_id, run_id, pred, LABELS, "d", lambda u: pred)
    assert (first.version, again.version) == ("1", "1")
    assert again.reason == "already the champion" and not again.promoted


def test_a_champion_scored_on_another_test_set_is_predicted_again(uri):
    cfg = registry_config("gate-cnn")
    model_id, run_id, pred = evaluated_model(uri, 0.90, seed=1)
    registry.gate(cfg, model_id, run_id, pred, LABELS, "old-test-set", lambda u: pred)
    challenger = evaluated_model(uri, 0.97, seed=5)
    asked = []
    decision = registry.gate(
        cfg, *challenger, LABELS, "new-test-set", lambda u: asked.append(u) or predictions(0.90, 1)
    )
    assert asked == ["models:/gate-cnn/1"] and decision.promoted


GATE = """
import sys, json, numpy as np
sys.path.insert(0, sys.argv[4])
from tests.integration.test_registry import registry_config, run_gate
d = run_gate(sys.argv[1], registry_config("race-cnn"), float(sys.argv[2]), int(sys.argv[3]))
print(json.dumps(d.as_dict()))
"""


def test_concurrent_evaluations_end_with_the_alias_on_the_best_model(uri, tmp_path):
    tracking.setup(tracking_config(uri))  # the store exists; the gates race for the alias
    accuracies = {0.80: 11, 0.97: 12}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATE, uri, str(a), str(s), str(ROOT)], stdout=subprocess.PIPE, text=True
        )
        for a, s in accuracies.items()
    ]
    decisions = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    best = next(d for d in decisions if d["accuracy"] == 0.97)
    assert champion_version(uri, "race-cnn") == best["version"]
    assert sorted(d["version"] for d in decisions) == ["1", "2"]  # one version each, none lost
    assert Path(tmp_path / "mlflow.db").is_file()
