"""Dicts, YAML files and `a.b=c` overrides into a `Config`, each value type-checked against its field.

`from_dict` starts from a base config and replaces only the keys given; a key that is not a field is
refused with the closest known name. Mesh rules merge by logical name (`merge_rules`). `dump_yaml` writes
the config a checkpoint keeps (`config.yaml`), which `load_yaml` reads back to the same tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from interaction_jax.config.presets import preset
from interaction_jax.config.tree import Config, ConfigError, LogicalRules, MeshConfig


class _Loader(yaml.SafeLoader):
    """YAML without YAML 1.1's base-60 numbers, which PyYAML still reads: `9:30` (a time of day,
    `serve.tools_clock`) is the string "9:30", not the integer 570. Every other scalar reads as before."""


_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBERS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# PyYAML's own int and float patterns, less their sexagesimal alternatives
_Loader.add_implicit_resolver(
    _NUMBERS[0],
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _NUMBERS[1],
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml_text(text: Any) -> Any:
    """`yaml.safe_load` without base-60 numbers (`_Loader`): every config YAML and override goes through it."""
    return yaml.load(text, Loader=_Loader)


def to_dict(cfg: Any) -> Any:
    """The config as plain dicts/lists/scalars (YAML-ready); rules become a mapping of all of them (loaded
    back, they merge by name onto the defaults, so rules that came from such merges come back the same)."""
    if isinstance(cfg, MeshConfig):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        out["rules"] = {name: list(axes) for name, axes in cfg.rules}
        return out
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type `hint` and convert lists to tuples; raise ConfigError."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}", "give the sub-keys as a mapping")
        return _from_dict(hint, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(key, f"{value!r} is not one of {list(choices)}", f"use one of {list(choices)}")
        return value
    if origin in (tuple,):
        args = typing.get_args(hint)
        if key.endswith("rules") and isinstance(value, dict):
            value = [[name, axes] for name, axes in value.items()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}", "give a YAML list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} items, got {len(value)}", "")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} does not match {hint}", "")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true/false, got {value!r}", f"write {key}=true or {key}=false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}", f"write {key}=<integer>")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 leaves "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}", f"write {key}=<number>")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}", "")
        return value
    if value is None and hint is type(None):
        return None
    raise ConfigError(key, f"cannot check a value against {hint}", "")


def _unknown_key(prefix: str, name: str, known: list[str]) -> ConfigError:
    key = f"{prefix}{name}"
    close = difflib.get_close_matches(name, known, n=1)
    fix = f"did you mean {prefix}{close[0]}?" if close else f"known keys here: {', '.join(known)}"
    return ConfigError(key, "unknown key", fix)


def _from_dict(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from `data`, starting from `base` (or the class defaults)."""
    hints = _field_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    base = base if base is not None else cls()
    updates = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown_key(f"{prefix}." if prefix else "", name, known)
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            updates[name] = _from_dict(hint, value, key, getattr(base, name))
        elif cls is MeshConfig and name == "rules":
            if not isinstance(value, dict):
                raise ConfigError(
                    key,
                    f"expected a mapping, got {value!r}",
                    "give the rules that change as {logical name: [mesh axes]}",
                )
            updates[name] = merge_rules(base.rules, _coerce(key, value, hint))
        else:
            updates[name] = _coerce(key, value, hint)
    return dataclasses.replace(base, **updates)


def merge_rules(base: LogicalRules, changes: LogicalRules) -> LogicalRules:
    """`base`'s logical-axis rules with `changes` applied by logical name: a name `base` has keeps its place
    (the priority order) and takes the new mesh axes (`[]`: replicated); a new name is appended, in the
    order `changes` gives it. No rule is removed."""
    changed = dict(changes)
    merged = tuple((name, changed.pop(name, axes)) for name, axes in base)
    return merged + tuple(changed.items())


def from_dict(data: dict, base: Config | None = None) -> Config:
    return _from_dict(Config, data or {}, "", base if base is not None else Config())


def load_yaml(path: str | Path, base: Config | None = None) -> Config:
    """A config from a YAML file of (partial) keys, applied on top of `base` (a preset)."""
    with open(path) as f:
        data = load_yaml_text(f) or {}
    if "preset" in data:
        base = preset(data.pop("preset"))
    return from_dict(data, base)


def load_mesh(path: str | Path) -> MeshConfig:
    """A mesh config from one of the `mesh_configs/*.yaml` files: its name, device kind, axes (and dcn,
    topology), on top of `MeshConfig`'s defaults.

    The logical-axis rules live in one place, `MeshConfig.rules`. A file states only the rules it changes,
    as a `rules:` mapping {logical name: [mesh axes]} merged by name (`merge_rules`): a default rule named
    there keeps its place in the priority order and takes the file's axes (`[]` replicates); a name the
    defaults lack is appended after them, in the file's order; every other default stands. The same merge
    applies to `mesh.rules` in a config YAML and to `--set mesh.rules.<name>=[...]`.
    """
    with open(path) as f:
        data = load_yaml_text(f) or {}
    return _from_dict(MeshConfig, data, "mesh", MeshConfig())


def override(cfg: Config, assignments: list[str]) -> Config:
    """Apply `a.b=c` assignments; values are parsed as YAML scalars and type-checked."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(assignment, "an override must look like a.b=c", f"write {assignment}=<value>")
        key, raw = assignment.split("=", 1)
        key = key.strip()
        value = load_yaml_text(raw) if raw.strip() else ""
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.1 reads yes/no/on/off as booleans; we want explicit true/false
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = from_dict(nested, cfg)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
