"""The registry gate in MLflow: register each evaluated model; move the champion alias only to a real improvement.

Consumes: an evaluation (per-image predictions and labels on the test split, the test set's digest), the
logged model it evaluated (``model_id``) and the ``registry`` config. Produces: a version of the registered
model ``registry.name`` (one per logged model: re-evaluating a model reuses its version), the alias
``registry.alias`` moved to it when it beats the current holder, and a :class:`Decision` (both accuracies,
McNemar's counts and p-value) that the caller writes to ``paths.registry`` and that is set as tags on the run
and, when the version is new, on the version.

"Beats" is decided on the same test images by McNemar's exact test, the test for two classifiers scored on
one test set: of the images where exactly one model is right, ``b`` favour the champion and ``c`` the
challenger; if both are equally accurate, ``c`` is Binomial(b + c, 1/2), and the two-sided binomial test
gives the p-value (:func:`scipy.stats.binomtest`). The challenger is promoted when its accuracy is higher and
p < ``registry.alpha`` (or on higher accuracy alone with ``registry.require_significance: false``); the
first model becomes champion. A deterministic rerun (identical predictions: b = c = 0, p = 1) never
displaces the champion.

The champion's predictions come from its evaluation's artifact (``eval/predictions.npz``) when it was scored
on the same test set (same digest), else from predicting the test set with the champion model. The decision
is made under a lock per registered model (beside a SQLite store; in the per-user cache for a server), so
concurrent evaluations (``dvc queue start -j 2``, joblib sweeps) end with the alias on the best model
whatever the interleaving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RegistryConfig
from pipeline.core.files import exclusive_lock
from pipeline.tracking.gate import Decision, decide

log = logging.getLogger(__name__)
PREDICTIONS_ARTIFACT = "eval/predictions.npz"
TAG_PREFIX = "registry."


@contextlib.contextmanager
def _registry_lock(uri: str, name: str) -> Iterator[None]:
    from pipeline.tracking.store import running_dir

    lock = running_dir(uri) / f"registry-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock"
    with exclusive_lock(lock):
        yield


def register(client: Any, name: str, model_id: str) -> tuple[Any, bool]:
    """(the version of ``name`` for this logged model, True if it was created now rather than found)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store as tracking

    try:
        tracking.retry(client.create_registered_model, name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    for version in tracking.retry(client.search_model_versions, f"name='{name}'"):
        if model_id in (version.model_id, version.source.removeprefix("models:/")):  # SQLite leaves model_id empty
            return version, False
    return tracking.retry(mlflow.register_model, f"models:/{model_id}", name, await_registration_for=0), True


def champion_predictions(
    client: Any, cfg: RegistryConfig, champion: Any, digest: str, predict: Callable[[str], np.ndarray]
) -> np.ndarray:
    """The champion's predicted classes on the test set named by ``digest``."""

    run_id = champion.tags.get(TAG_PREFIX + "eval_run_id")
    if run_id and champion.tags.get(TAG_PREFIX + "test_digest") == digest:
        return load_predictions(run_id)[0]
    log.info("champion v%s was scored on another test set: predicting it again", champion.version)
    return predict(f"models:/{cfg.name}/{champion.version}")


def gate(
    cfg: RegistryConfig,
    model_id: str,
    run_id: str,
    predictions: np.ndarray,
    labels: np.ndarray,
    digest: str,
    predict: Callable[[str], np.ndarray],
) -> Decision:
    """Register the evaluated model and move the alias if it beats the champion; tag run and version.

    ``predict(model_uri)`` gives another registered model's predicted classes on this test set (needed only
    when the champion was scored on another one). The active tracking URI is the store's.
    """
    import mlflow
    from mlflow.entities import RunTag

    from pipeline.tracking import store as tracking

    client = mlflow.MlflowClient()
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    accuracy = float(np.mean(predictions == labels))
    with _registry_lock(mlflow.get_tracking_uri(), cfg.name):
        version, created = register(client, cfg.name, model_id)
        try:
            champion = tracking.retry(client.get_model_version_by_alias, cfg.name, cfg.alias)
        except mlflow.exceptions.MlflowException:
            champion = None
        if champion is not None and str(champion.version) == str(version.version):
            champion_correct: np.ndarray | None = np.asarray(predictions) == labels  # itself: b = c = 0
        elif champion is not None:
            champion_correct = champion_predictions(client, cfg, champion, digest, predict) == labels
        else:
            champion_correct = None
        verdict = decide(predictions == labels, champion_correct, cfg)
        if champion is not None and str(champion.version) == str(version.version):
            verdict = dataclasses.replace(verdict, promote=False, reason="already the champion")
        decision = Decision(
            promoted=verdict.promote,
            reason=verdict.reason,
            model=cfg.name,
            version=str(version.version),
            accuracy=accuracy,
            champion_version=None if champion is None else str(champion.version),
            champion_accuracy=None if champion_correct is None else float(np.mean(champion_correct)),
            b=verdict.b,
            c=verdict.c,
            p_value=verdict.p_value,
            alpha=cfg.alpha,
            require_significance=cfg.require_significance,
        )
        tags = {f"{TAG_PREFIX}{k}": str(v) for k, v in decision.as_dict().items()}
        if created:  # a version's tags keep the decision made when it was registered; re-gating tags only the run
            version_tags = {**tags, TAG_PREFIX + "eval_run_id": run_id, TAG_PREFIX + "test_digest": digest}
            # One call per tag (the registry has no batch call): side by side against a server, where each
            # is a round trip (14 in a row cost 0.8 s); in turn against SQLite, which has one writer.
            with ThreadPoolExecutor(max_workers=8 if tracking.is_server(mlflow.get_tracking_uri()) else 1) as pool:
                list(pool.map(lambda kv: tracking.retry(client.set_model_version_tag, cfg.name, decision.version, *kv),
                              version_tags.items()))  # fmt: skip
        tracking.retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if verdict.promote:
            tracking.retry(client.set_registered_model_alias, cfg.name, cfg.alias, decision.version)
    log.info("registry: %s", decision.summary())
    return decision


def log_predictions(predictions: np.ndarray, labels: np.ndarray) -> None:
    """Save the per-image predicted classes and the labels as the active run's ``eval/predictions.npz``: what
    a later gate, and the sweep's table, compare against image by image."""
    import tempfile

    import mlflow

    from pipeline.data.formats import save_npz
    from pipeline.tracking import store as tracking

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(PREDICTIONS_ARTIFACT).name
        save_npz(path, predicted=np.asarray(predictions, dtype=np.int16), labels=np.asarray(labels, dtype=np.int16))
        tracking.retry(mlflow.log_artifact, str(path), str(Path(PREDICTIONS_ARTIFACT).parent))


def load_predictions(run_id: str, tracking_uri: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, labels) that a run's evaluation saved."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=PREDICTIONS_ARTIFACT, tracking_uri=tracking_uri
    )
    with np.load(path, allow_pickle=False) as npz:
        return npz["predicted"], npz["labels"]
