"""The registry gate in MLflow: the registry holds the champion and the models that were promoted, nothing else.

Consumes: an evaluation (per-image predictions and labels on the test split, the test set's digest), the
logged model it evaluated (``model_id``) and the ``registry`` config. Produces a :class:`Decision` (both
accuracies, McNemar's counts and p-value, the version or None) that the caller writes to ``paths.registry``,
that the evaluation's run holds as its artifact ``registry/decision.json`` beside three tags
(``registry.promoted``, ``registry.version``, ``registry.reason``); and, only when the model is promoted, a
version of the registered model ``registry.name`` (one per logged model) with the alias ``registry.alias``
moved to it. The decision is made first, against the current champion; a model that is not promoted stays an
MLflow LoggedModel linked to its run and adds no version. A version's tags are what a later gate reads back
(``registry.eval_run_id``, ``registry.test_digest``) and two to read (``registry.accuracy``,
``registry.reason``).

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
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RegistryConfig
from pipeline.core.files import exclusive_lock
from pipeline.tracking.gate import Decision, decide

log = logging.getLogger(__name__)
PREDICTIONS_ARTIFACT = "eval/predictions.npz"
#: The gate's whole decision (:meth:`Decision.as_dict`), an artifact of the evaluation's run.
DECISION_ARTIFACT = "registry/decision.json"
TAG_PREFIX = "registry."
#: The tags the gate sets on the evaluation's run; the rest of its decision is in DECISION_ARTIFACT.
RUN_TAGS = (TAG_PREFIX + "promoted", TAG_PREFIX + "version", TAG_PREFIX + "reason")


@contextlib.contextmanager
def _registry_lock(uri: str, name: str) -> Iterator[None]:
    from pipeline.tracking.store import running_dir

    lock = running_dir(uri) / f"registry-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock"
    with exclusive_lock(lock):
        yield


def registered_model(client: Any, name: str) -> Any | None:
    """The registered model ``name``, or None when there is none yet (asked without MLflow printing anything)."""
    from pipeline.tracking import store as tracking

    found = tracking.retry(client.search_registered_models, filter_string=f"name = '{name}'", max_results=1)
    return found[0] if found else None


def version_of(client: Any, name: str, model_id: str) -> Any | None:
    """The version of ``name`` that holds the logged model ``model_id``, or None when it was never registered."""
    from pipeline.tracking import store as tracking

    for version in tracking.retry(client.search_model_versions, f"name='{name}'"):
        if model_id in (version.model_id, version.source.removeprefix("models:/")):  # SQLite leaves model_id empty
            return version
    return None


def register(client: Any, name: str, model_id: str, tags: dict[str, str]) -> Any:
    """A new version of ``name`` for the logged model ``model_id`` (the registered model created first when
    there is none), tagged ``tags``; the logged model lists it (``mlflow.modelVersions``), as the UI shows.

    MlflowClient's own calls, not ``mlflow.register_model``: that prints a notice per step ("Registered model
    ... already exists", "Created version ...")."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    from pipeline.tracking import store as tracking

    if registered_model(client, name) is None:
        tracking.retry(client.create_registered_model, name, recover=lambda: registered_model(client, name))
    logged = tracking.retry(client.get_logged_model, model_id)
    version = tracking.retry(
        client.create_model_version, name, source=f"models:/{model_id}", run_id=logged.source_run_id, tags=tags,
        model_id=model_id, recover=lambda: version_of(client, name, model_id),
    )  # fmt: skip
    listed = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    listed.append({"name": name, "version": str(version.version)})
    tracking.retry(client.set_logged_model_tags, model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    return version


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
    """Decide whether the evaluated model beats the champion; register it and move the alias only if it does.

    ``predict(model_uri)`` gives another registered model's predicted classes on this test set (needed only
    when the champion was scored on another one). The active tracking URI is the store's. The run gets three
    tags (:data:`RUN_TAGS`) and the whole decision as its artifact :data:`DECISION_ARTIFACT`.
    """
    import mlflow
    from mlflow.entities import RunTag

    from pipeline.tracking import store as tracking

    client = mlflow.MlflowClient()
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    correct = predictions == labels
    with _registry_lock(mlflow.get_tracking_uri(), cfg.name):
        exists = registered_model(client, cfg.name) is not None
        champion = _champion(client, cfg) if exists else None
        own = version_of(client, cfg.name, model_id) if exists else None  # a champion now, or one displaced since
        itself = champion is not None and own is not None and str(champion.version) == str(own.version)
        if itself:
            champion_correct: np.ndarray | None = correct  # b = c = 0
        elif champion is not None:
            champion_correct = champion_predictions(client, cfg, champion, digest, predict) == labels
        else:
            champion_correct = None
        verdict = decide(correct, champion_correct, cfg)
        if itself:
            verdict = dataclasses.replace(verdict, promote=False, reason="already the champion")
        accuracy = float(np.mean(correct))
        # What a later gate reads back (champion_predictions), and what a person reads in the registry's UI.
        version_tags = {
            TAG_PREFIX + "eval_run_id": run_id,
            TAG_PREFIX + "test_digest": digest,
            TAG_PREFIX + "accuracy": f"{accuracy:.6f}",
            TAG_PREFIX + "reason": verdict.reason,
        }
        if verdict.promote:
            if own is None:
                own = register(client, cfg.name, model_id, version_tags)
            else:  # a displaced version back on top (on another test set): tagged by this evaluation
                for key, value in version_tags.items():
                    tracking.retry(client.set_model_version_tag, cfg.name, str(own.version), key, value)
            tracking.retry(client.set_registered_model_alias, cfg.name, cfg.alias, str(own.version))
    decision = Decision(
        promoted=verdict.promote,
        reason=verdict.reason,
        model=cfg.name,
        version=None if own is None else str(own.version),
        accuracy=accuracy,
        champion_version=None if champion is None else str(champion.version),
        champion_accuracy=None if champion_correct is None else float(np.mean(champion_correct)),
        b=verdict.b,
        c=verdict.c,
        p_value=verdict.p_value,
        alpha=cfg.alpha,
        require_significance=cfg.require_significance,
        model_id=model_id,
        run_id=run_id,
        test_digest=digest,
    )
    tags = dict(zip(RUN_TAGS, (str(decision.promoted), decision.version or "none", decision.reason), strict=True))
    tracking.retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    tracking.retry(client.log_dict, run_id, decision.as_dict(), DECISION_ARTIFACT)
    log.info("registry: %s", decision.summary())
    return decision


def _champion(client: Any, cfg: RegistryConfig) -> Any | None:
    """The version holding ``registry.alias``, or None (no alias yet)."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store as tracking

    try:
        return tracking.retry(client.get_model_version_by_alias, cfg.name, cfg.alias)
    except MlflowException:
        return None


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
