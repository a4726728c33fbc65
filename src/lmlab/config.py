"""Configs are data: a TOML preset per (model, preset), every key overridable with ``key=value``.

A config is a plain nested dict, so it serialises to ``config.json`` as is and two runs can be compared
by comparing dicts.
"""

from __future__ import annotations

import copy
import json
import tomllib
from importlib import resources
from typing import Any

from lmlab.errors import LmlabError

PRESETS = ("smoke", "cpu", "gpu")


def _config_root():
    return resources.files("lmlab") / "configs"


def available_models() -> list[str]:
    return sorted(p.name for p in (_config_root() / "models").iterdir() if p.is_dir())


def _load(path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise LmlabError(f"unknown preset '{path.name.removesuffix('.toml')}' for {what}: "
                         f"choose one of {', '.join(PRESETS)}")
    with path.open("rb") as f:
        return tomllib.load(f)


def load_preset(model: str, preset: str) -> dict[str, Any]:
    """The preset's config for one model; unknown names give the list of known ones."""
    if model not in available_models():
        raise LmlabError(f"unknown model '{model}': choose one of {', '.join(available_models())}")
    return _load(_config_root() / "models" / model / f"{preset}.toml", model)


def load_study(preset: str) -> dict[str, Any]:
    """What the study pipeline runs after training: evaluation corpora, prompts, sampling settings."""
    return _load(_config_root() / "study" / f"{preset}.toml", "the study")


def recipe_config(recipe: str, preset: str, chosen: dict[str, Any] | None = None,
                  overrides: list[str] = ()) -> dict[str, Any]:
    """The preset of a recipe that is not a PTB model (``finetune``, ``ft_eval``, ``dpo``), with the values the
    command line chose (``{"model.name": …}``; None = keep the preset's) and then ``--set`` overrides."""
    cfg = _load(_config_root() / recipe / f"{preset}.toml", recipe.replace("_", "-"))
    for dotted, value in (chosen or {}).items():
        if value is not None:
            section, key = dotted.split(".")
            cfg[section][key] = value
    cfg = apply_overrides(cfg, list(overrides))
    cfg["preset"] = preset
    return cfg


def parse_value(text: str) -> Any:
    """Read an override value as TOML would (numbers, booleans, strings, lists); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with each ``section.key=value`` applied.

    Only keys that exist may be overridden, so a typo fails loudly instead of being ignored.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise LmlabError(f"bad override '{item}': write it as section.key=value")
        dotted, raw = item.split("=", 1)
        *parents, leaf = dotted.strip().split(".")
        node = config
        for name in parents:
            if not isinstance(node.get(name), dict):
                raise LmlabError(f"unknown config key '{dotted}': see the preset's TOML for the keys")
            node = node[name]
        if leaf not in node:
            raise LmlabError(f"unknown config key '{dotted}': see the preset's TOML for the keys")
        node[leaf] = parse_value(raw.strip())
    return config


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, indent=2)


# Keys that say where and how long a run runs, not what it computes: a run whose config differs only in
# these may be resumed or reused.
RUNTIME_KEYS = {("train", "epochs"), ("train", "threads"), ("train", "device"), ("train", "patience")}


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: tuple[str, ...] = (),
                       shared_only: bool = False) -> set[tuple[str, ...]]:
    """Dotted paths (as tuples) whose values differ between two configs. With ``shared_only``, keys that one
    side lacks are not differences: a run recorded before a preset gained a key ran with that key's old
    behaviour, which new keys default to."""
    keys = set()
    for k in set(old) | set(new):
        if shared_only and (k not in old or k not in new):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= config_differences(a, b, prefix + (k,), shared_only)
        elif a != b:
            keys.add(prefix + (k,))
    return keys
