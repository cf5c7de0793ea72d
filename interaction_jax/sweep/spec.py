"""A sweep file and the runs it describes: loading, run names, and every run's validated config.

Sweep file format (a Python file, loaded from its path; the file name without `.py` names the sweep)::

    PRESET = "tiny"                     # preset every run starts from (--preset overrides); default tiny
    MESH = "mesh_configs/cpu-8.yaml"    # optional mesh config, relative to the working directory
                                        # (the repository root); --mesh overrides; default: the preset's
    BASE = {"train.steps": 300}         # optional overrides applied to every run
    SWEPT = ("stream.chunk_ms",)        # optional: the keys that name the runs and head the table's
                                        # columns; default: every key whose value differs between runs

    def runs():                         # yields one dict of overrides per run
        for ms in (100, 200, 400):
            yield {"stream.chunk_ms": ms, "data.episode_chunks": 10_000 // ms}

Keys are config paths as in `--set` (`model.n_experts`); values are Python scalars or lists, passed
on as YAML (`--set key=value`), so a pod run gets exactly the config a local run gets. A run's config
is: preset → mesh → BASE → the run's overrides → `--set` extras (on every run; a `--set` of a key the
runs set is refused, since it would make the runs alike). A run's name is its swept values as
`key=value`, joined by commas, with keys shortened to their last part (`chunk_ms=100`).

Every run's config is validated as a training config against the mesh's devices before anything runs
(`config.validate(..., purpose="train")`: a sweep trains, so the keys only the server reads, such as
`serve.max_sessions`, are not its concern).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from interaction_jax import config as config_lib
from interaction_jax.config.loading import load_yaml_text

DEFAULT_PRESET = "tiny"
DEFAULT_WORKDIR_ROOT = "runs/sweeps"


class SweepError(config_lib.ConfigError):
    """A problem with a sweep file, one of its runs or the sweep flags (a ConfigError, so the CLI
    reports it the same way: `where: problem — fix: …`)."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep file."""

    name: str
    path: str
    preset: str
    mesh: str | None
    base: dict[str, Any]
    runs: tuple[dict[str, Any], ...]
    swept: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run with its config built and validated."""

    name: str
    overrides: dict[str, Any]  # the run's own overrides, as runs() yielded them
    assignments: tuple[str, ...]  # every `key=value` applied after preset and mesh: BASE, run, --set
    cfg: config_lib.Config
    workdir: str


# ----------------------------------------------------------------------------------------------
# Loading a sweep file


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Load and check a sweep file (see the module docstring); runs() is consumed once, here."""
    file = Path(path)
    where = str(path)
    if not file.is_file():
        raise SweepError(where, "no such sweep file", "give the path of a Python file, e.g. experiments/top_k.py")
    name = file.stem
    spec = importlib.util.spec_from_file_location(f"_interaction_jax_sweep_{name}", file)
    if spec is None or spec.loader is None:
        raise SweepError(where, "cannot be loaded as Python", "give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling in the file need the module registered
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise SweepError(where, f"{type(e).__name__}: {e}", "fix the sweep file") from e

    preset = getattr(module, "PRESET", DEFAULT_PRESET)
    if not isinstance(preset, str):
        raise SweepError(f"{where}: PRESET", f"expected a preset name, got {preset!r}", "")
    mesh = getattr(module, "MESH", None)
    if mesh is not None and not isinstance(mesh, (str, os.PathLike)):
        raise SweepError(f"{where}: MESH", f"expected a path, got {mesh!r}", "")
    base = _check_overrides(f"{where}: BASE", getattr(module, "BASE", {}))
    make_runs = getattr(module, "runs", None)
    if not callable(make_runs):
        raise SweepError(where, "defines no runs()", "add `def runs():` yielding one dict of overrides per run")
    try:
        runs = tuple(_check_overrides(f"{where}: run {i + 1}", r) for i, r in enumerate(make_runs()))
    except SweepError:
        raise
    except Exception as e:
        raise SweepError(f"{where}: runs()", f"{type(e).__name__}: {e}", "fix the sweep file") from e
    if not runs:
        raise SweepError(f"{where}: runs()", "yielded no runs", "yield at least one dict of overrides")
    swept = getattr(module, "SWEPT", None)
    if swept is None:
        swept = _varying_keys(runs)
    elif isinstance(swept, str) or not all(isinstance(k, str) for k in swept):
        raise SweepError(f"{where}: SWEPT", f"expected a tuple of keys, got {swept!r}", 'write SWEPT = ("a.b",)')
    else:
        swept = tuple(swept)
        for key in swept:
            if not any(key in r for r in runs):
                raise SweepError(f"{where}: SWEPT", f"no run sets {key!r}", "list keys the runs set")
    return Sweep(name, where, preset, None if mesh is None else str(mesh), base, runs, swept)


def _check_overrides(where: str, overrides: Any) -> dict[str, Any]:
    if not isinstance(overrides, Mapping):
        raise SweepError(where, f"expected a dict of overrides, got {overrides!r}", 'use {"a.b": value}')
    for key in overrides:
        if not isinstance(key, str) or not key or "=" in key:
            raise SweepError(where, f"bad key {key!r}", 'keys are config paths like "model.n_experts"')
    return dict(overrides)


def _varying_keys(runs: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    varying = tuple(k for k in keys if len({yaml_value(k, r.get(k, _MISSING)) for r in runs}) > 1)
    return varying or tuple(keys)  # one run (or identical ones): name them by everything they set


_MISSING = object()


# ----------------------------------------------------------------------------------------------
# Values, assignments, run names


def yaml_value(key: str, value: Any) -> str:
    """`value` as the YAML text `config.override` reads back to the same value."""
    if value is _MISSING:
        return "\0missing"
    plain = list(value) if isinstance(value, tuple) else value
    try:
        text = yaml.safe_dump(plain, default_flow_style=True, width=math.inf).strip()
    except yaml.YAMLError as e:
        fix = "use a number, bool, string or list"
        raise SweepError(key, f"cannot write {value!r} as a --set value ({e})", fix) from e
    text = text.removesuffix("\n...")  # safe_dump ends plain scalars with a document-end marker
    if "\n" in text or load_yaml_text(text) != plain:  # read back as `config.override` reads it
        raise SweepError(key, f"{value!r} does not survive `--set {key}=…`", "use a number, bool, string or list")
    return text


def assignment(key: str, value: Any) -> str:
    """The `--set` text `key=value` for one override."""
    return f"{key}={yaml_value(key, value)}"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last part (`stream.chunk_ms` → `chunk_ms`), or the whole key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _slug(value: Any) -> str:
    text = yaml_value("", value).strip("'\"") if not isinstance(value, str) else value
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text.replace(", ", "+")).strip("-")
    return text or "empty"


def run_name(overrides: Mapping[str, Any], swept: Sequence[str]) -> str:
    """`chunk_ms=100`, `n_experts=8,top_k=2`: the run's swept values (keys shortened)."""
    short = short_keys(swept)
    parts = [f"{short[k]}={_slug(overrides[k])}" for k in swept if k in overrides]
    return ",".join(parts) or "default"


# ----------------------------------------------------------------------------------------------
# Every run's config, validated before anything runs


def _apply(cfg: config_lib.Config, assignments: Sequence[str], where: str) -> config_lib.Config:
    try:
        return config_lib.override(cfg, list(assignments))
    except config_lib.ConfigError as e:
        raise SweepError(where, str(e)) from e


def base_config(sweep: Sweep, *, preset: str | None = None, mesh: str | None = None) -> config_lib.Config:
    """The preset (the flag's, else the sweep's) with the mesh (the flag's, else the sweep's) applied."""
    cfg = config_lib.preset(preset or sweep.preset)
    mesh_path = mesh or sweep.mesh
    if mesh_path:
        if not Path(mesh_path).is_file():
            raise SweepError(
                "--mesh" if mesh else f"{sweep.path}: MESH",
                f"no mesh config at {mesh_path} (paths are relative to {os.getcwd()})",
                "run from the repository root or give the path of a mesh_configs/*.yaml file",
            )
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(mesh_path))
    return cfg


def plan_runs(
    sweep: Sweep,
    *,
    preset: str | None = None,
    mesh: str | None = None,
    sets: Sequence[str] = (),
    workdir_root: str = DEFAULT_WORKDIR_ROOT,
    num_devices: int | None = None,
) -> list[PlannedRun]:
    """Build and validate every run's config; raise SweepError naming the run at the first problem.

    Mesh-dependent checks use `num_devices`, else the count the mesh implies (for a mesh with a -1
    axis, the fewest devices it allows, which still checks divisibility by the fixed axes).
    """
    from interaction_jax.data import scenarios  # lazily, as the trainer: the scenario code pulls in JAX

    cfg0 = base_config(sweep, preset=preset, mesh=mesh)
    base = [assignment(k, v) for k, v in sweep.base.items()]
    cfg0 = _apply(cfg0, base, f"{sweep.path}: BASE")
    sets = list(sets)
    for text in sets:
        key = text.split("=", 1)[0].strip()
        if any(key in r for r in sweep.runs):
            raise SweepError(
                f"--set {text}",
                f"{key} is set by the runs of sweep {sweep.name}, so every run would get the same value",
                f"drop --set {key}=…, or change the values in {sweep.path}",
            )
    _apply(cfg0, sets, "--set")  # unknown keys and bad values in --set are named as such

    devices, _ = config_lib.mesh_device_count(cfg0.mesh, num_devices)
    planned: list[PlannedRun] = []
    names: dict[str, int] = {}
    for i, overrides in enumerate(sweep.runs):
        name = run_name(overrides, sweep.swept)
        where = f"sweep {sweep.name}, run {name!r} ({i + 1} of {len(sweep.runs)})"
        if name in names:
            raise SweepError(
                where,
                f"has the same name as run {names[name] + 1}, so both would train in one workdir",
                f"make the runs differ in SWEPT={list(sweep.swept)}, or add the key that tells them apart",
            )
        names[name] = i
        run_sets = [assignment(k, v) for k, v in overrides.items()]
        cfg = _apply(cfg0, [*run_sets, *sets], where)
        try:
            config_lib.validate(cfg, devices, purpose="train")
            scenarios.check_mix(cfg)
        except config_lib.ConfigError as e:
            raise SweepError(where, str(e)) from e
        workdir = f"{workdir_root.rstrip('/')}/{sweep.name}/{name}"
        planned.append(PlannedRun(name, dict(overrides), (*base, *run_sets, *sets), cfg, workdir))
    return planned
