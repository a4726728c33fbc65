"""Presets as data: TOML files read into the typed dataclasses of :mod:`lmlab.config.schema`.

``configs/<recipe>/<preset>.toml`` (PTB models: ``configs/models/<arch>/<preset>.toml``). A preset may start
with ``inherit = "cpu"``: it is read over that preset, so it holds only what differs. Every ``key=value``
override and every preset value is checked against the schema (unknown key, wrong type, out of range, not one
of the choices) with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from importlib import resources
from typing import Any

from lmlab.config import schema
from lmlab.errors import LmlabError

PRESETS = ("smoke", "cpu", "gpu")
RECIPES = {"finetune": schema.FinetuneConfig, "ft_eval": schema.FtEvalConfig, "dpo": schema.DpoConfig,
           "rl": schema.RlConfig}


def _config_root():
    return resources.files("lmlab") / "configs"


def available_models() -> list[str]:
    return sorted(p.name for p in (_config_root() / "models").iterdir() if p.is_dir())


def _read_preset(folder, preset: str, what: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = folder / f"{preset}.toml"
    if not path.is_file():
        raise LmlabError(f"unknown preset '{preset}' for {what}: choose one of {', '.join(PRESETS)}")
    with path.open("rb") as f:
        data = tomllib.load(f)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if parent in seen:
        raise LmlabError(f"presets of {what} inherit in a circle: {' -> '.join((*seen, preset, parent))}")
    return merge(_read_preset(folder, parent, what, (*seen, preset)), data)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_train(model: str, preset: str, overrides: list[str] = ()) -> schema.TrainConfig:
    """The preset of a PTB model (rnn, gru, lstm, transformer) with ``--set`` overrides, checked."""
    if model not in available_models():
        raise LmlabError(f"unknown model '{model}': choose one of {', '.join(available_models())}")
    data = _read_preset(_config_root() / "models" / model, preset, model)
    return build(schema.TrainConfig, dict(apply_overrides(data, overrides), preset=preset))


def load_recipe(recipe: str, preset: str, chosen: dict[str, Any] | None = None, overrides: list[str] = ()):
    """The preset of ``finetune``, ``ft_eval``, ``dpo`` or ``rl``, with the values the command line chose
    (``{"model.name": …}``; None = keep the preset's) and then ``--set`` overrides."""
    data = _read_preset(_config_root() / recipe, preset, recipe.replace("_", "-"))
    for dotted, value in (chosen or {}).items():
        if value is not None:
            section, name = dotted.split(".")
            data[section][name] = value
    return build(RECIPES[recipe], dict(apply_overrides(data, overrides), preset=preset))


def load_study(preset: str, overrides: list[str] = ()) -> schema.StudyConfig:
    data = _read_preset(_config_root() / "study", preset, "the study")
    return build(schema.StudyConfig, dict(apply_overrides(data, overrides), preset=preset))


def parse_value(text: str) -> Any:
    """Read an override value as TOML would (numbers, booleans, strings, lists); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``section.key=value`` applied; only existing keys may be set."""
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


# --- dict -> dataclass, checked --------------------------------------------------------------------------------

def build(cls, data: dict[str, Any], path: str = ""):
    """``cls`` filled from ``data``; unknown, missing or invalid keys are a one-line LmlabError."""
    if not isinstance(data, dict):
        raise LmlabError(f"config key '{path}' must be a table of keys, not {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LmlabError(f"unknown config key '{_join(path, unknown[0])}': see the preset's TOML for the keys")
    missing = sorted(set(fields) - set(data))
    if missing:
        raise LmlabError(f"config key '{_join(path, missing[0])}' is missing from the preset")
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], data[name], _join(path, name), f.metadata) for name, f in fields.items()}
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _value(kind, value, path: str, meta) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else ()
    if options and all(dataclasses.is_dataclass(o) for o in options):
        arch = value.get("arch") if isinstance(value, dict) else None
        for option in options:
            if arch in option.ARCHES:
                return build(option, value, path)
        allowed = [a for o in options for a in o.ARCHES]
        raise LmlabError(f"{path}.arch={arch!r} is not allowed: choose one of {', '.join(allowed)}")
    if dataclasses.is_dataclass(kind):
        return build(kind, value, path)
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list):
            raise LmlabError(f"{path}={value!r} is not allowed: expected a list")
        (item,) = typing.get_args(kind)
        items = [_value(item, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
        if "item_choices" in meta:
            for v in items:
                if v not in meta["item_choices"]:
                    raise LmlabError(f"{path} contains {v!r}, which is not allowed: choose from "
                                     f"{', '.join(map(str, meta['item_choices']))}")
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise LmlabError(f"{path}={value!r} is not allowed: expected a table")
        return value
    return _checked(_scalar(kind, value, path), path, meta)


def _scalar(kind, value, path: str):
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise LmlabError(f"{path}={value!r} is not allowed: expected a table")
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise LmlabError(f"{path}={value!r} is not allowed: expected {names.get(kind, kind.__name__)}")
    return value


def _checked(value, path: str, meta) -> Any:
    if "choices" in meta and value not in meta["choices"]:
        raise LmlabError(f"{path}={value!r} is not allowed: choose one of {', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise LmlabError(f"{path}={value!r} is not allowed: it must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise LmlabError(f"{path}={value!r} is not allowed: it must be at most {meta['max']}")
    if "below" in meta and value >= meta["below"]:
        raise LmlabError(f"{path}={value!r} is not allowed: it must be below {meta['below']}")
    return value


# --- configs as data ---------------------------------------------------------------------------------------------

def to_dict(cfg) -> dict[str, Any]:
    """The plain nested dict written to ``config.json`` (and compared between runs)."""
    return dataclasses.asdict(cfg)


def runtime_keys(cls) -> set[tuple[str, ...]]:
    """Dotted paths (as tuples) of the keys marked ``runtime`` in the schema: where and how long a run runs,
    not what it computes. A run whose config differs only in these may be resumed or reused."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        for option in options:
            if dataclasses.is_dataclass(option):
                keys |= {(f.name, *k) for k in runtime_keys(option)}
        if f.metadata.get("runtime"):
            keys.add((f.name,))
    return keys


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


def changed_keys(old: dict[str, Any], new, shared_only: bool = False) -> list[str]:
    """The dotted keys, other than runtime keys, in which a recorded config differs from ``new`` (a config
    dataclass): empty when a run may be resumed or reused."""
    ignored = runtime_keys(type(new))
    diff = config_differences(old, to_dict(new), shared_only=shared_only) - ignored
    return sorted(".".join(k) for k in diff)
