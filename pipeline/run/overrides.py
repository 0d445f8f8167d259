"""The Hydra app's command line, checked before Hydra sees it.

Consumes: the arguments of ``python -m pipeline.run`` and ``conf/``. Produces: the arguments to hand to
Hydra, with every credential in an override replaced by an environment reference
(:func:`pipeline.core.redact.externalize`: Hydra's files and log lines then never hold it), or a
:class:`~pipeline.core.errors.ConfigError` that names the override, says what is allowed and suggests the nearest
known key or choice, exactly like a bad key in ``params.yaml``:

    error: overrides: unknown key 'optimizer.lr' (not a field of 'optimizer'); did you mean 'optimizer.learning_rate'?
    error: overrides: optimizer=adamw: no such choice in group 'optimizer'; allowed: adam, rmsprop, sgd; did you mean 'adam'?

A single run is composed and validated completely here, so a refused run leaves no ``outputs/`` folder;
the jobs of a sweep are each validated by :mod:`pipeline.run.sweep` before the first one starts.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, compose, flatten, suggest, validate
from pipeline.core import redact
from pipeline.core.errors import ConfigError

SOURCE = "overrides"


def config_groups(*conf_dirs: Path | str) -> dict[str, list[str]]:
    """Config groups and their options (``<dir>/<group>/<option>.yaml``) over the given folders."""
    groups: dict[str, set[str]] = {}
    for conf_dir in map(Path, conf_dirs):
        for d in sorted(conf_dir.iterdir()) if conf_dir.is_dir() else []:
            if d.is_dir() and any(d.glob("*.yaml")):
                # A leading underscore marks a base other options extend (dataset/_folder.yaml), not a choice.
                groups.setdefault(d.name, set()).update(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))
    return {name: sorted(options) for name, options in sorted(groups.items())}


def search_path(parsed: list[Any]) -> list[Path]:
    """Folders a ``hydra.searchpath=[file://...]`` override adds (Hydra looks for config groups there too)."""
    folders = []
    for o in parsed:
        if o.key_or_group == "hydra.searchpath":
            value = o.value()
            folders += [Path(str(v).removeprefix("file://")) for v in (value if isinstance(value, list) else [value])]
    return [f for f in folders if f.is_dir()]


def _values(override: Any) -> list[Any]:
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def check(overrides: list[str], multirun: bool, conf_dir: Path | str = CONF_DIR) -> None:
    """Refuse unknown groups, choices and keys; for a single run, also every bad value (the full schema)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"{SOURCE}: {exc}") from None
    groups = config_groups(conf_dir, *search_path(parsed))
    chosen: dict[str, list[str]] = {}
    keyed = []
    for o in parsed:
        key = o.key_or_group
        if o.is_hydra_override() or key.startswith("hydra/") or o.package is not None:
            continue  # Hydra's own settings (launcher, sweeper, run dir): Hydra checks those
        if key in groups and not (o.is_add() or o.is_force_add() or o.is_delete()):
            for value in map(str, _values(o)):
                if value not in groups[key]:
                    raise ConfigError(
                        f"{SOURCE}: {key}={value}: no such choice in group '{key}'; "
                        f"allowed: {', '.join(groups[key])}{suggest(value, groups[key])}"
                    )
            chosen[key] = [str(v) for v in _values(o)]
        elif o.is_add() or o.is_force_add():
            continue  # adding a key is explicit; the schema refuses keys it does not know
        else:
            keyed.append(o)
    if keyed:
        searching = [str(o.input_line) for o in parsed if o.key_or_group == "hydra.searchpath"]
        known = _known_keys(chosen, conf_dir, searching)
        for o in keyed:
            key = o.key_or_group
            if key in groups:  # ~group deletes a default: nothing to check
                continue
            if not any(k == key or k.startswith(key + ".") for k in known):
                parent = key.rsplit(".", 1)[0] if "." in key else ""
                where = f" (not a field of '{parent}')" if parent else ""
                raise ConfigError(f"{SOURCE}: unknown key '{key}'{where}{suggest(key, sorted(known))}")
    if not multirun:
        validate(compose(overrides, conf_dir), source=SOURCE)


def _known_keys(chosen: dict[str, list[str]], conf_dir: Path | str, extra: list[str]) -> set[str]:
    """Dotted keys of the composed config (with the ``extra`` overrides, e.g. Hydra's search path), over
    every combination of the chosen group options."""
    keys: set[str] = set()
    names = list(chosen)
    for combo in itertools.product(*(chosen[n] for n in names)):
        cfg = compose([*extra, *(f"{n}={v}" for n, v in zip(names, combo, strict=True))], conf_dir)
        tree = OmegaConf.to_container(cfg, resolve=False)
        for dotted in flatten(tree):
            parts = dotted.split(".")
            keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return keys


def hydra_arguments() -> argparse.ArgumentParser:
    """The command line of a ``@hydra.main`` app, as Hydra 1.3 documents it (``--help``, ``--hydra-help``,
    ``--cfg``, ``--multirun``...), parsed the way Hydra parses it; Hydra's own parser is in its private
    ``_internal`` package. An option Hydra adds later stops this parse, and Hydra's own error shows instead."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for flags in (["--help", "-h"], ["--hydra-help"], ["--version"], ["--resolve"], ["--run", "-r"],
                  ["--multirun", "-m"], ["--shell-completion", "-sc"]):  # fmt: skip
        parser.add_argument(*flags, action="store_true")
    for flags in (["--cfg", "-c"], ["--package", "-p"], ["--config-path", "-cp"], ["--config-name", "-cn"],
                  ["--config-dir", "-cd"], ["--experimental-rerun"]):  # fmt: skip
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def prepare_argv(argv: list[str], conf_dir: Path | str = CONF_DIR) -> list[str]:
    """Check the overrides in ``argv`` and return ``argv`` with their credentials externalized."""
    try:
        args = hydra_arguments().parse_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return argv  # not a command line we know: Hydra reports it
    replaced = {o: redact.externalize(o) for o in args.overrides}
    out = [replaced.get(token, token) for token in argv]
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.version
    if not informational:
        check(list(replaced.values()), multirun=bool(args.multirun), conf_dir=conf_dir)
    return out
