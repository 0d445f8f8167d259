"""Where a config comes from: ``conf/`` composed by Hydra (with overrides), or ``params.yaml``, its composition
that DVC tracks; and the helpers that turn a typed config back into plain data.

Consumes: ``conf/`` and overrides, or a params file. Produces: a DictConfig to validate, a typed
:class:`~pipeline.config.schema.Config` (:func:`load_params`), ``params.yaml`` (:func:`write_params`, byte for
byte what DVC's Hydra integration writes), dotted dicts for MLflow params (:func:`flatten`).

Run ``python -m pipeline.config`` to rewrite ``params.yaml`` from ``conf/`` (``make params``);
``python -m pipeline.config clean`` removes the outputs (``make clean``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import CONF_DIR, Config
from pipeline.config.validate import validate
from pipeline.core.errors import ConfigError, user_errors

PARAMS_FILE = "params.yaml"
#: Folders Hydra's runs write into (conf/config.yaml: hydra.run.dir, hydra.sweep.dir).
HYDRA_OUTPUT_ROOTS = ("outputs", "multirun")


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | str = CONF_DIR) -> DictConfig:
    """Compose ``conf/`` with Hydra overrides, as ``dvc exp run -S`` and the tests do."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def load(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | str = CONF_DIR) -> Config:
    """``conf/`` composed with ``overrides`` and validated: the typed config, from the config's one source."""
    return validate(compose(overrides, conf_dir), source="overrides" if overrides else "config")


def load_params(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate ``params.yaml`` (safe YAML loader): what every DVC stage starts with."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameters file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(data, source=str(path))


def plain(section: Any) -> Any:
    """A config dataclass (a section or the whole) as plain data: enumerations as their values, YAML-safe."""
    return json.loads(json.dumps(dataclasses.asdict(section)))


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (enumerations as their values, the model's arguments flat, as in params.yaml): what MLflow's
    params and a hash are made of."""
    data = plain(cfg)
    data["model"] = {"name": cfg.model.name, **data["model"]["params"]}
    return data


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``optimizer.name``); lists stay values."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = data
    return out


def config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    """Stable short hash of some sections of the config (names the resumable-training folder)."""
    data = {s: to_dict(cfg)[s] for s in sections}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_params(path: Path | str = PARAMS_FILE, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Write the composition of conf/ to params.yaml, byte for byte as DVC's Hydra integration does."""
    text = OmegaConf.to_yaml(compose(overrides))
    Path(path).write_text(text, encoding="utf-8")
    return text


def clean(path: Path | str = PARAMS_FILE) -> list[str]:
    """Remove every output the pipeline writes (``paths.*`` of params.yaml and Hydra's run folders); the
    MLflow store stays. Returns what was removed."""
    from pipeline.core.files import remove

    targets = [*to_dict(load_params(path))["paths"].values(), *HYDRA_OUTPUT_ROOTS]
    removed = [t for t in targets if os.path.lexists(t)]
    remove(*removed)
    return removed


def main() -> None:
    """``python -m pipeline.config [overrides]`` writes params.yaml; ``python -m pipeline.config clean``
    removes the pipeline's outputs."""
    with user_errors():
        if sys.argv[1:] == ["clean"]:
            print("removed: " + (" ".join(clean()) or "nothing"))
            return
        write_params(PARAMS_FILE, sys.argv[1:])
    print(f"wrote {PARAMS_FILE} from {os.path.relpath(CONF_DIR)}/")
