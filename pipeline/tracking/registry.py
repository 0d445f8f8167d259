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
on the same test set (same digest), else from predicting the test set with the champion model.

Concurrent gates. On one machine the decision is made under a file lock per registered model (beside a SQLite
store; in the per-user cache for a server), so ``dvc queue start -j 2`` and joblib sweeps gate one at a time.
Gates on different machines share no lock: after registering, a promoted model's gate settles (:func:`settle`):
it replays the versions registered since the champion it decided against, in version order, with the same
McNemar test, moves the alias to the replay's holder, and repeats until no version appeared meanwhile. The
alias ends where gating those models one at a time, in version order, would have put it: on the clearly
better of two models promoted at the same moment, whichever registered first. Meanwhile it may rest for a
moment on the other one. A registered version carries its model card (:mod:`pipeline.tracking.card`) as its
description; the evaluation's run holds it as ``model_card.md``.
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
from pipeline.tracking.card import ARTIFACT as CARD_ARTIFACT
from pipeline.tracking.card import CardFacts
from pipeline.tracking.card import render as render_card
from pipeline.tracking.gate import Decision, Turn, decide, replay, settled

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


#: The training run's tags a registered version carries too (pipeline/tracking/runs.py, pipeline/stages/train.py).
LINEAGE_TAGS = ("dvc_exp_name", "git_commit", "dvc_model_md5")


def register(client: Any, name: str, model_id: str, tags: dict[str, str]) -> Any:
    """A new version of ``name`` for the logged model ``model_id`` (the registered model created first when
    there is none), tagged ``tags``; the logged model lists it (``mlflow.modelVersions``), as the UI shows.

    MlflowClient's own calls, not ``mlflow.register_model``: that prints a notice per step ("Registered model
    ... already exists", "Created version ...")."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    from pipeline.tracking import store as tracking

    if registered_model(client, name) is None:
        try:
            tracking.retry(client.create_registered_model, name, recover=lambda: registered_model(client, name))
        except MlflowException as exc:  # another machine's gate created it a moment ago
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    logged = tracking.retry(client.get_logged_model, model_id)
    trained = tracking.retry(client.get_run, logged.source_run_id).data.tags
    # Links back to DVC and git: the experiment, the commit, and the model's hash as dvc.lock records it.
    tags = {**{k: trained[k] for k in LINEAGE_TAGS if k in trained}, **tags}
    version = tracking.retry(
        client.create_model_version, name, source=f"models:/{model_id}", run_id=logged.source_run_id, tags=tags,
        model_id=model_id, recover=lambda: version_of(client, name, model_id),
        await_creation_for=0,  # MLflow's stores create it READY; waiting only prints "Waiting up to 300 seconds"
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


def checkpoint(step: str) -> None:
    """Called with each step's name as a gate passes it ("start", "decided", "registered", then "listed" and
    "moved" once per round of the settle); a no-op. tests/integration/test_gate_race.py replaces it (the
    module's attribute) in two processes to force the interleavings of two gates."""


#: Rounds of the settle before it gives up re-checking: each round after the first needs a version registered by
#: another gate between two of its reads.
SETTLE_ROUNDS = 20


def gate(
    cfg: RegistryConfig,
    model_id: str,
    run_id: str,
    predictions: np.ndarray,
    labels: np.ndarray,
    digest: str,
    predict: Callable[[str], np.ndarray],
    card: CardFacts | None = None,
) -> Decision:
    """Decide whether the evaluated model beats the champion; register it and move the alias only if it does.

    ``predict(model_uri)`` gives another registered model's predicted classes on this test set (needed only
    when the champion was scored on another one). The active tracking URI is the store's. The run gets three
    tags (:data:`RUN_TAGS`) and the whole decision as its artifact :data:`DECISION_ARTIFACT`; with ``card``
    (the evaluation's facts, :func:`pipeline.tracking.card.facts`) the run also gets the model card
    (``model_card.md``), and a version registered now gets it as its description.
    """
    import mlflow
    from mlflow.entities import RunTag

    from pipeline.tracking import store as tracking

    client = mlflow.MlflowClient()
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    correct = predictions == labels
    accuracy = float(np.mean(correct))
    settled_how = ""
    checkpoint("start")
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
        checkpoint("decided")
        promoted = verdict.promote
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
            checkpoint("registered")
            known = {str(own.version): correct}
            if champion is not None and champion_correct is not None:
                known[str(champion.version)] = champion_correct
            winner, turns = settle(client, cfg, champion, own, known, labels, digest, predict)
            settled_how = settled(str(own.version), winner, turns)
            promoted = winner == str(own.version)
    decision = Decision(
        promoted=promoted,
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
        settled=settled_how,
    )
    tags = dict(zip(RUN_TAGS, (str(decision.promoted), decision.version or "none", decision.reason), strict=True))
    tracking.retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    tracking.retry(client.log_dict, run_id, decision.as_dict(), DECISION_ARTIFACT)
    if card is not None:
        attach_card(client, card, decision, registered_now=verdict.promote)
    log.info("registry: %s", decision.summary())
    return decision


def settle(
    client: Any,
    cfg: RegistryConfig,
    base: Any | None,
    own: Any,
    known: dict[str, np.ndarray],
    labels: np.ndarray,
    digest: str,
    predict: Callable[[str], np.ndarray],
) -> tuple[str | None, list[Turn]]:
    """Move the alias to where one-at-a-time gating would put it, whatever other machines' gates do meanwhile.

    Each round reads the versions registered since ``base`` (the champion this gate decided against; every
    version when there was none), ``own`` among them, replays them in version order from ``base`` with the
    gate's own test (:func:`pipeline.tracking.gate.replay`: McNemar on this test set), moves the alias to the
    replay's holder and reads the versions again; it stops when no version appeared in between. Why that is
    safe without a lock: the last gate to move the alias read the versions after that move and found none
    new, so every version registered before then was in its replay, and a gate registering later would move
    the alias again after it. ``known`` holds versions' correctness already at hand (own, base); the others
    come from their evaluations' predictions (:func:`champion_predictions`)."""
    from pipeline.tracking import store as tracking

    base_version = None if base is None else str(base.version)
    seen: list[str] | None = None
    winner: str | None = str(own.version)
    turns: list[Turn] = []
    versions: dict[str, Any] = {}

    def correct(version: str) -> np.ndarray:
        if version not in known:
            known[version] = champion_predictions(client, cfg, versions[version], digest, predict) == labels
        return known[version]

    for _ in range(SETTLE_ROUNDS):
        window = _since(client, cfg.name, base_version, own)
        order = list(window)
        if order == seen:
            return winner, turns
        versions.update(window)
        winner, turns = replay(base_version, [v for v in order if v != base_version], correct, cfg)
        checkpoint("listed")
        if winner is not None:
            tracking.retry(client.set_registered_model_alias, cfg.name, cfg.alias, winner)
        checkpoint("moved")
        seen = order
    log.warning("registry: versions kept appearing for %d rounds; the alias is on v%s", SETTLE_ROUNDS, winner)
    return winner, turns


def _since(client: Any, name: str, base: str | None, own: Any) -> dict[str, Any]:
    """The versions to replay, in order: ``base``, those registered after it, then ``own`` if it is older (a
    displaced version put back on top)."""
    from pipeline.tracking import store as tracking

    floor = 0 if base is None else int(base)
    found = sorted(tracking.retry(client.search_model_versions, f"name='{name}'"), key=lambda v: int(v.version))
    window = {str(v.version): v for v in found if int(v.version) >= floor}
    if int(own.version) < floor:
        window[str(own.version)] = own
    return window


def attach_card(client: Any, card: CardFacts, decision: Decision, registered_now: bool) -> str:
    """Render the model card; log it as the evaluation run's ``model_card.md`` and, for a version this gate
    registered (or put back on top), set it as the version's description."""
    from pipeline.tracking import store as tracking

    uri = f"models:/{decision.model}/{decision.version}" if decision.version else f"models:/{decision.model_id}"
    facts = dataclasses.replace(card, model_uri=uri, train_images=card.train_images or _train_images(client, decision))
    text = render_card(facts, decision)
    tracking.retry(client.log_text, decision.run_id, text, CARD_ARTIFACT)
    if registered_now and decision.version is not None:
        tracking.retry(client.update_model_version, decision.model, decision.version, description=text)
    return text


def _train_images(client: Any, decision: Decision) -> int | None:
    """How many images the model was trained on: its training run's dataset input (context ``training``)."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store as tracking

    try:
        logged = tracking.retry(client.get_logged_model, decision.model_id)
        if not logged.source_run_id:
            return None
        run = tracking.retry(client.get_run, logged.source_run_id)
    except MlflowException:  # no such model or run: the card says "not recorded"
        return None
    for entry in run.inputs.dataset_inputs:
        if {t.key: t.value for t in entry.tags}.get("mlflow.data.context") == "training":
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                return int(json.loads(entry.dataset.profile)["targets_shape"][0])
    return None


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
