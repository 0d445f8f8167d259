"""Validation: a composed config (Hydra's DictConfig or a plain dict from ``params.yaml``) becomes a typed
:class:`~pipeline.config.schema.Config`, or a :class:`~pipeline.core.errors.ConfigError` naming the key, the bad
value and what is allowed, with a "did you mean" for a misspelt key.

Consumes: the composed tree and where it came from (``source``, for messages). Produces: the typed config.
Types, unknown keys and missing keys are checked by merging into the structured schema (OmegaConf, struct
mode); each field's rule (:func:`~pipeline.config.schema.checked`) and the rules across fields afterwards.
Everything runs before any work, whichever way the config came.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pipeline.config.schema import (
    CONF_DIR,
    ONE_HOT_ONLY,
    OPTIMIZERS,
    Config,
    LRSchedule,
    Strategy,
    TrainConfig,
    keys,
)
from pipeline.core import redact
from pipeline.core.errors import ConfigError


def validate(raw: Any, source: str = "config") -> Config:
    """Validate a composed config (DictConfig or plain dict) against the schema; return it typed.

    ``source`` names where the config came from (a file, "overrides") in error messages. Credentials found
    in the config are registered with :mod:`pipeline.core.redact`, so no later output shows them.
    """
    data = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    data.pop("hydra", None)
    redact.register_tree(data)
    opt = data.get("optimizer")
    opt_name = opt.get("name") if isinstance(opt, dict) else None
    if opt_name not in OPTIMIZERS:
        raise ConfigError(
            f"{source}: optimizer.name={opt_name!r} is not a known optimizer; choose one of {', '.join(OPTIMIZERS)}"
            + suggest(str(opt_name), list(OPTIMIZERS))
        )
    _check_one_hot_trap(data, source)
    data["model"] = validate_model(data.get("model"), source)
    schema = OmegaConf.structured(Config)
    schema.optimizer = OmegaConf.structured(OPTIMIZERS[opt_name])
    try:
        merged = OmegaConf.merge(schema, data)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    check_fields(cfg, "", source)
    if len(cfg.dataset.classes) != cfg.dataset.num_classes:
        raise ConfigError(
            f"{source}: bad value for 'dataset.classes': {len(cfg.dataset.classes)} names; allowed: one name per "
            f"class, dataset.num_classes={cfg.dataset.num_classes}"
        )
    t = cfg.train
    _check_strategy(t, source)
    _check_schedule(t, source)
    for key in ("log_every", "backup_every", "steps_per_epoch"):
        # Keras calls batch callbacks once per execution: a curve point or a backup between two is never seen,
        # and an epoch of steps_per_epoch batches ends only at an execution's end.
        # (log_every: auto is resolved to such a multiple by pipeline.model.fit.resolve_log_every.)
        if isinstance(getattr(t, key), int) and getattr(t, key) % t.steps_per_execution:
            raise ConfigError(
                f"{source}: bad value for 'train.{key}': {getattr(t, key)}; allowed: a multiple of "
                f"train.steps_per_execution={t.steps_per_execution}"
            )
    return cfg


def model_choices(conf_dir: Path = CONF_DIR) -> dict[str, Path]:
    """The models there are: ``conf/model/<name>.yaml``, by name."""
    return {p.stem: p for p in sorted((conf_dir / "model").glob("*.yaml")) if not p.stem.startswith("_")}


def validate_model(model: Any, source: str, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The ``model`` section against its own file in ``conf/model/``, the builder's schema: the same keys, each
    of the same type. Returns it as the schema's ``{name, params}``."""
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(f"{source}: 'model' needs a 'name': one of {', '.join(model_choices(conf_dir))}")
    name, choices = model["name"], model_choices(conf_dir)
    if name not in choices:
        raise ConfigError(
            f"{source}: model.name={name!r}: no conf/model/{name}.yaml; allowed: {', '.join(choices)}"
            + suggest(name, list(choices))
        )
    reference = yaml.safe_load(choices[name].read_text(encoding="utf-8")) or {}
    reference.pop("defaults", None)
    params = {k: v for k, v in model.items() if k != "name"}
    for key in params:
        if key not in reference:
            raise ConfigError(
                f"{source}: unknown key 'model.{key}' (not an argument of model {name!r}, conf/model/{name}.yaml)"
                + suggest(f"model.{key}", [f"model.{k}" for k in reference])
            )
    for key, default in reference.items():
        if key == "name":
            continue
        if key not in params:
            raise ConfigError(f"{source}: missing key 'model.{key}' (conf/model/{name}.yaml sets it)")
        if not _same_kind(params[key], default):
            raise ConfigError(
                f"{source}: bad value for 'model.{key}': {params[key]!r}; allowed: a value like {default!r} "
                f"({type(default).__name__}, conf/model/{name}.yaml)"
            )
    return {"name": name, "params": params}


def _same_kind(value: Any, like: Any) -> bool:
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float))
    if isinstance(like, list):
        return (
            isinstance(value, list) and all(_same_kind(v, like[0]) for v in value) if like else isinstance(value, list)
        )
    return like is None or isinstance(value, type(like))


def _check_schedule(t: TrainConfig, source: str) -> None:
    """A warm-up belongs to a schedule that has one: on a constant rate it would silently do nothing."""
    if t.warmup > 0 and t.lr_schedule is not LRSchedule.cosine:
        raise ConfigError(
            f"{source}: bad value for 'train.warmup': {t.warmup}; allowed: 0.0 with train.lr_schedule="
            f"{t.lr_schedule.value} (a warm-up is part of train.lr_schedule=cosine)"
        )


def _check_strategy(t: TrainConfig, source: str) -> None:
    """Combinations TensorFlow's MirroredStrategy does not support with the pinned Keras and TensorFlow."""
    if t.devices is not None and t.strategy is Strategy.default:
        raise ConfigError(
            f"{source}: bad value for 'train.devices': {t.devices}; allowed: null with train.strategy=default "
            "(one device); set train.strategy=mirrored to train on several"
        )
    if t.strategy is Strategy.mirrored and t.steps_per_execution > 1:
        # Keras 3.15 on TensorFlow 2.21: fit's multi-step loop under MirroredStrategy fails at its first step
        # ("You must feed a value for placeholder tensor 'while/body/.../Placeholder_1'").
        raise ConfigError(
            f"{source}: bad value for 'train.steps_per_execution': {t.steps_per_execution}; allowed: 1 under "
            "train.strategy=mirrored (Keras' multi-step loop fails under MirroredStrategy with the pinned versions)"
        )
    if t.strategy is Strategy.mirrored and t.devices is not None and t.batch_size < len(t.devices):
        raise ConfigError(
            f"{source}: bad value for 'train.batch_size': {t.batch_size}; allowed: at least one sample per replica "
            f"under train.strategy=mirrored (the global batch; {len(t.devices)} devices)"
        )


def suggest(word: str, choices: list[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``choices`` (dotted keys or plain names), or nothing.

    Keys are compared level by level: an abbreviation of a sibling (``lr`` for ``learning_rate``), then a
    sibling with a close spelling (``epocs``), then any key with a close spelling.
    """
    import difflib

    parent, _, leaf = word.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in choices if c.rpartition(".")[0] == parent}
    for name, choice in siblings.items():
        words = name.split("_")
        if len(words) > 1 and leaf == "".join(w[:1] for w in words):
            return f"; did you mean '{choice}'?"
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{siblings[close[0]]}'?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = str(exc).splitlines()[0]
    if isinstance(exc, MissingMandatoryValue):
        return f"missing key '{key}': the schema has no defaults, conf/ (or params.yaml) must set it"
    if "not in struct" in msg or (msg.startswith("Key '") and "not in" in msg):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return f"unknown key '{key}'" + (f" (not a field of '{parent}')" if parent else "") + suggest(key, keys(Config))
    value = getattr(exc, "value", None)
    if "expected one of [" in msg:  # an enumeration (schema.Precision, ...): its values, as for every rule
        choices = msg.split("expected one of [", 1)[1].rsplit("]", 1)[0].split(", ")
        return f"bad value for '{key}': {value!r}; allowed: {' | '.join(choices)}"
    return f"bad value for '{key}': {value!r} ({msg})"


def _check_one_hot_trap(data: dict, source: str) -> None:
    if "loss" in data:
        raise ConfigError(
            f"{source}: unknown key 'loss': the pipeline trains with sparse_categorical_crossentropy, the loss "
            "for integer labels (categorical losses need one-hot labels); remove the key"
        )
    for name in data.get("metrics") or []:
        if isinstance(name, str) and name.lower() in ONE_HOT_ONLY:
            raise ConfigError(
                f"{source}: metrics={name!r} expects one-hot labels, but this dataset's labels are integers; "
                f"Keras would report a meaningless number (the seed printed 0.0992 'accuracy' for a 98.8% "
                f"model). Use {ONE_HOT_ONLY[name.lower()]!r} instead."
            )


def check_fields(obj: Any, prefix: str, source: str) -> None:
    """Apply every field's ``checked`` rule, depth first, in declaration order."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        ok = f.metadata.get("ok")
        if ok is not None:
            items = list(enumerate(value)) if f.metadata.get("each") else [(None, value)]
            for i, item in items:
                if not ok(item):
                    shown = key if i is None else f"{key}[{i}]"
                    raise ConfigError(f"{source}: bad value for '{shown}': {item!r}; allowed: {f.metadata['allowed']}")
        children = value.items() if isinstance(value, dict) else [(None, value)]
        for name, child in children:
            if dataclasses.is_dataclass(child):
                check_fields(child, f"{key}.{name}." if name is not None else f"{key}.", source)
