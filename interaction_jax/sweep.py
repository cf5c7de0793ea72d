"""Sweeps: run a Python file of config overrides one run after another, or print pod launch commands.

`interaction-jax sweep experiments/chunk_size.py` loads the sweep file, builds and validates the config
of every run (a bad sweep fails before the first run starts, with a `ConfigError` naming the run),
then trains the runs one after another, each in its own workdir `<--workdir>/<sweep>/<run>`, printing
a summary table as it goes and writing `<--workdir>/<sweep>/summary.json`. Training resumes from a
workdir's latest checkpoint, so running the same sweep again continues it. A run that raises is
reported as failed and the sweep goes on; a preempted run (SIGTERM, time limit) stops the sweep.

`--dry-run` prints the `interaction-jax train` command of every run instead of training; with
`--pod NAME` it prints, for every run, one `gcloud compute tpus tpu-vm ssh NAME --worker=I` command
per host of a multi-host TPU pod. Every host runs the same `interaction-jax train --distributed …`:
`jax.distributed.initialize()` finds the coordinator on Cloud TPU by itself. The host count is the
mesh's device count over TPU_CHIPS_PER_HOST (--hosts overrides it; a mesh with a -1 axis needs it);
a multislice mesh (dcn sizes) addresses its slices as NAME-0, NAME-1, … (a queued resource's nodes).
The output is a shell script: each run's hosts start in the background (`&`) and `wait` ends the run
before the next one starts. A dry run never trains and never asks JAX for devices.

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
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from interaction_jax import config as config_lib

DEFAULT_PRESET = "tiny"
DEFAULT_WORKDIR_ROOT = "runs/sweeps"
# Chips (= JAX devices) per host VM of a multi-host TPU v4, v5e or v5p slice. Single-host slices with
# another count (v5e-8: 8 chips on one host) need `hosts=1` (--hosts 1).
TPU_CHIPS_PER_HOST = 4
POD_REPO_DIR = "interaction-jax"  # where the repository is checked out on every pod host (home-relative)

TrainFn = Callable[[config_lib.Config, str], Any]


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


@dataclasses.dataclass
class SweepRun:
    """What became of one run: `status` is done, failed, preempted, pending (not started) or planned
    (a dry run; `commands` holds its launch commands)."""

    name: str
    overrides: dict[str, Any]
    workdir: str
    status: str
    result: Any = None  # the train function's result (train.loop.TrainResult)
    error: str | None = None
    commands: list[str] = dataclasses.field(default_factory=list)


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
    varying = tuple(k for k in keys if len({_yaml_value(k, r.get(k, _MISSING)) for r in runs}) > 1)
    return varying or tuple(keys)  # one run (or identical ones): name them by everything they set


_MISSING = object()


# ----------------------------------------------------------------------------------------------
# Values, assignments, run names


def _yaml_value(key: str, value: Any) -> str:
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
    if "\n" in text or yaml.safe_load(text) != plain:
        raise SweepError(key, f"{value!r} does not survive `--set {key}=…`", "use a number, bool, string or list")
    return text


def assignment(key: str, value: Any) -> str:
    """The `--set` text `key=value` for one override."""
    return f"{key}={_yaml_value(key, value)}"


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last part (`stream.chunk_ms` → `chunk_ms`), or the whole key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _slug(value: Any) -> str:
    text = _yaml_value("", value).strip("'\"") if not isinstance(value, str) else value
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text.replace(", ", "+")).strip("-")
    return text or "empty"


def run_name(overrides: Mapping[str, Any], swept: Sequence[str]) -> str:
    """`chunk_ms=100`, `n_experts=8,top_k=2`: the run's swept values (keys shortened)."""
    short = _short_keys(swept)
    parts = [f"{short[k]}={_slug(overrides[k])}" for k in swept if k in overrides]
    return ",".join(parts) or "default"


# ----------------------------------------------------------------------------------------------
# Planning: every run's config, validated before anything runs


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
            config_lib.validate(cfg, devices)
            scenarios.check_mix(cfg)
        except config_lib.ConfigError as e:
            raise SweepError(where, str(e)) from e
        workdir = f"{workdir_root.rstrip('/')}/{sweep.name}/{name}"
        planned.append(PlannedRun(name, dict(overrides), (*base, *run_sets, *sets), cfg, workdir))
    return planned


# ----------------------------------------------------------------------------------------------
# Running locally


def _default_train_fn(progress: bool = True) -> TrainFn:
    from interaction_jax.train.loop import train  # lazily: importing the trainer pulls in JAX

    return functools.partial(train, progress=progress)


def run_local(
    sweep: Sweep,
    planned: Sequence[PlannedRun],
    *,
    train_fn: TrainFn | None = None,
    out: TextIO | None = None,
    summary_path: str | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[SweepRun]:
    """Train the runs one after another with `train_fn(cfg, workdir)`, printing the table after each
    (default train_fn: `train.loop.train` with `progress`)."""
    out = out if out is not None else sys.stdout
    train = train_fn if train_fn is not None else _default_train_fn(progress)
    results = [SweepRun(p.name, p.overrides, p.workdir, "pending") for p in planned]
    for i, (run, result) in enumerate(zip(planned, results, strict=True)):
        print(f"[{i + 1}/{len(planned)}] {sweep.name}: {run.name} → {run.workdir}", file=out, flush=True)
        try:
            outcome = train(run.cfg, run.workdir)
        except Exception as e:
            result.status = "failed"
            result.error = f"{type(e).__name__}: {e}"
            print(f"run {run.name} failed:", file=sys.stderr)
            traceback.print_exc()
        else:
            result.result = outcome
            result.status = "preempted" if getattr(outcome, "preempted", False) else "done"
        finished = i + 1 == len(planned) or result.status == "preempted"
        if summary_path:
            write_summary(summary_path, sweep, planned, results, extra)
        print(format_table(sweep, results, final=finished), file=out, flush=True)
        if result.status == "preempted":
            print(
                f"sweep {sweep.name} stopped: run {run.name} was preempted at step "
                f"{getattr(result.result, 'step', '?')}; run the same command again to continue",
                file=out,
                flush=True,
            )
            break
    if summary_path:
        print(f"summary: {summary_path}", file=out, flush=True)
    return results


def _metrics(result: Any) -> dict[str, Any]:
    fields = ("step", "loss", "heldout_loss", "tokens_per_s", "seconds", "preempted")
    return {f: _plain(getattr(result, f, None)) for f in fields}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    try:
        return _plain(float(value))  # numpy / jax scalars
    except (TypeError, ValueError):
        return str(value)


def summary_dict(
    sweep: Sweep,
    planned: Sequence[PlannedRun],
    results: Sequence[SweepRun],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What summary.json holds: the sweep, and per run its overrides, status, metrics and error."""
    runs = []
    for p, r in zip(planned, results, strict=True):
        entry: dict[str, Any] = {
            "name": r.name,
            "workdir": r.workdir,
            "status": r.status,
            "overrides": {k: _plain_value(v) for k, v in r.overrides.items()},
            "set": list(p.assignments),
        }
        entry.update(_metrics(r.result))  # all None when the run never finished
        entry["error"] = r.error
        runs.append(entry)
    return {
        "sweep": sweep.name,
        "file": sweep.path,
        "swept": list(sweep.swept),
        "base": {k: _plain_value(v) for k, v in sweep.base.items()},
        **(dict(extra) if extra else {}),
        "runs": runs,
    }


def _plain_value(value: Any) -> Any:
    return [_plain_value(v) for v in value] if isinstance(value, (list, tuple)) else _plain(value)


def write_summary(
    path: str,
    sweep: Sweep,
    planned: Sequence[PlannedRun],
    results: Sequence[SweepRun],
    extra: Mapping[str, Any] | None = None,
) -> None:
    text = json.dumps(summary_dict(sweep, planned, results, extra), indent=2) + "\n"
    if "://" in path:  # gs://…: through the same path library Orbax uses
        from etils import epath

        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(target)  # never a half-written summary


# ----------------------------------------------------------------------------------------------
# The table


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(s):
        return "—"
    if round(s, 1) < 60:
        return f"{s:.1f}s"
    m, s = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _number(value: Any, fmt: str, nan: str = "nan") -> str:
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return nan if math.isnan(x) else format(x, fmt)


def format_table(sweep: Sweep, results: Sequence[SweepRun], *, final: bool = True) -> str:
    """The summary table: run, swept values, steps, final loss, held-out loss, tokens/s, time, status."""
    short = _short_keys(sweep.swept)
    header = ["run", *(short[k] for k in sweep.swept), "steps", "loss", "held-out", "tokens/s", "time", "status"]
    right = [False] + [True] * (len(header) - 2) + [False]
    rows = []
    for r in results:
        m = _metrics(r.result) if r.result is not None else {}
        status = r.status if r.error is None else f"{r.status}: {_one_line(r.error)}"
        rows.append(
            [
                r.name,
                *(_yaml_value(k, r.overrides[k]) if k in r.overrides else "—" for k in sweep.swept),
                "—" if m.get("step") is None else str(m["step"]),
                _number(m.get("loss"), ".4f"),
                _number(m.get("heldout_loss"), ".4f"),
                _number(m.get("tokens_per_s"), ",.0f", nan="—"),  # nan: no steps ran (a finished run resumed)
                _duration(m.get("seconds")),
                status,
            ]
        )
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "preempted", "pending")}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    title = f"sweep {sweep.name}: {len(results)} runs ({tally})" + ("" if final else " so far")
    return "\n".join([title, line(header), *(line(row) for row in rows)])


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# Launch commands (dry runs)


def train_argv(run: PlannedRun, *, preset: str, mesh: str | None, distributed: bool = False) -> list[str]:
    """`interaction-jax train …` for one run (the same config the local run trains); `distributed`
    adds --distributed, which makes every host of a pod join one run through jax.distributed."""
    argv = ["interaction-jax", "train", *(["--distributed"] if distributed else []), "--preset", preset]
    if mesh:
        argv += ["--mesh", mesh]
    argv += ["--workdir", run.workdir]
    for text in run.assignments:
        argv += ["--set", text]
    return argv


def pod_layout(
    mesh: config_lib.MeshConfig, *, hosts: int | None = None, num_devices: int | None = None
) -> tuple[int, int, int]:
    """(devices, slices, hosts per slice) of the TPU pod a mesh config runs on.

    Devices: `num_devices`, else what the mesh implies, else (a -1 axis) hosts × TPU_CHIPS_PER_HOST.
    Slices: the product of the mesh's dcn sizes. Hosts: `hosts` (all slices together), else devices /
    TPU_CHIPS_PER_HOST (at least one host per slice).
    """
    if mesh.device_kind != "tpu":
        raise SweepError(
            "--pod",
            f"launches on a TPU pod, but mesh {mesh.name} is for device_kind {mesh.device_kind}",
            "pass a TPU mesh, e.g. --mesh mesh_configs/tpu-v5e-16.yaml",
        )
    if hosts is not None and hosts < 1:
        raise SweepError("--hosts", f"must be at least 1, got {hosts}", "")
    devices, fixed = config_lib.mesh_device_count(mesh, num_devices)
    slices = config_lib.mesh_slices(mesh)
    if not fixed:
        if not hosts:
            raise SweepError(
                f"mesh {mesh.name}",
                "has an axis of -1 (all the devices), so the pod's size is unknown without devices",
                "pass --hosts N (hosts in the pod), or give the mesh explicit axis sizes",
            )
        devices = hosts * TPU_CHIPS_PER_HOST
    if hosts is None:
        per_slice = devices // slices
        if devices % slices or (per_slice > TPU_CHIPS_PER_HOST and per_slice % TPU_CHIPS_PER_HOST):
            raise SweepError(
                f"mesh {mesh.name}",
                f"{devices} devices in {slices} slice(s) do not fill hosts of {TPU_CHIPS_PER_HOST} chips",
                "pass --hosts N",
            )
        hosts = slices * max(1, per_slice // TPU_CHIPS_PER_HOST)
    if hosts % slices or devices % hosts:
        raise SweepError(
            "--hosts",
            f"{hosts} hosts do not split evenly into {slices} slice(s) of {devices} devices",
            f"give a multiple of {slices} that divides {devices}",
        )
    return devices, slices, hosts // slices


def pod_commands(
    run: PlannedRun,
    *,
    pod: str,
    zone: str | None,
    preset: str,
    mesh: str | None,
    slices: int,
    hosts_per_slice: int,
    repo_dir: str = POD_REPO_DIR,
) -> list[str]:
    """One `gcloud compute tpus tpu-vm ssh` command per host; multislice nodes are named POD-0, POD-1, …
    (a queued resource's node prefix)."""
    train = shlex.join(train_argv(run, preset=preset, mesh=mesh, distributed=True))
    remote = f"cd {shlex.quote(repo_dir)} && {train}"
    commands = []
    for s in range(slices):
        node = pod if slices == 1 else f"{pod}-{s}"
        for worker in range(hosts_per_slice):
            argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node]
            if zone:
                argv += ["--zone", zone]
            argv += [f"--worker={worker}", "--command", remote]
            commands.append(shlex.join(argv))
    return commands


def _portable_path(path: str) -> str:
    """A mesh path as the pod hosts see it: relative to the repository root where possible."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return path
    return path


def print_dry_run(
    sweep: Sweep,
    planned: Sequence[PlannedRun],
    *,
    preset: str,
    mesh: str | None,
    out: TextIO,
    workdir_root: str = DEFAULT_WORKDIR_ROOT,
    pod: str | None = None,
    zone: str | None = None,
    layout: tuple[int, int, int] | None = None,
) -> list[SweepRun]:
    results = []
    if pod is None:
        print(f"# sweep {sweep.name}: {len(planned)} runs, one after another on this machine", file=out)
        for i, run in enumerate(planned):
            command = shlex.join(train_argv(run, preset=preset, mesh=mesh))
            print(f"\n# run {i + 1}/{len(planned)}: {run.name}\n{command}", file=out)
            results.append(SweepRun(run.name, run.overrides, run.workdir, "planned", commands=[command]))
        return results
    assert layout is not None
    devices, slices, per_slice = layout
    remote_mesh = _portable_path(mesh) if mesh else None
    where = f"slice(s) {pod}-0…{pod}-{slices - 1}" if slices > 1 else f"TPU pod {pod}"
    print(
        f"# sweep {sweep.name}: {len(planned)} runs on {where}: {devices} chips, {slices * per_slice} hosts "
        f"({per_slice} per slice), mesh {planned[0].cfg.mesh.name}\n"
        f"# every host runs the same command (jax.distributed.initialize() finds the coordinator);\n"
        f"# a run's hosts start together in the background and `wait` ends the run before the next",
        file=out,
    )
    if "://" not in workdir_root:
        print(
            f"# note: workdir {workdir_root} is on each host's own disk; multi-host checkpoints need "
            "shared storage: pass --workdir gs://BUCKET/sweeps",
            file=out,
        )
    for i, run in enumerate(planned):
        commands = pod_commands(
            run,
            pod=pod,
            zone=zone,
            preset=preset,
            mesh=remote_mesh,
            slices=slices,
            hosts_per_slice=per_slice,
        )
        print(f"\n# run {i + 1}/{len(planned)}: {run.name}", file=out)
        for command in commands:
            print(f"{command} &", file=out)
        print("wait", file=out)
        results.append(SweepRun(run.name, run.overrides, run.workdir, "planned", commands=commands))
    return results


# ----------------------------------------------------------------------------------------------
# The CLI's entry point


def run_sweep_command(
    path: str,
    *,
    preset: str | None = None,
    sets: Sequence[str] = (),
    workdir_root: str = DEFAULT_WORKDIR_ROOT,
    dry_run: bool = False,
    pod: str | None = None,
    zone: str | None = None,
    mesh: str | None = None,
    hosts: int | None = None,
    num_devices: int | None = None,
    train_fn: TrainFn | None = None,
    progress: bool = True,
    out: TextIO | None = None,
) -> list[SweepRun]:
    """`interaction-jax sweep PATH`: train every run locally, or with `dry_run` print the commands.

    preset / mesh: the --preset / --mesh flags when given (None: the sweep file's PRESET / MESH); sets:
    the --set flags, applied on top of every run; workdir_root: runs train in
    `<workdir_root>/<sweep>/<run>`; pod / zone / hosts: with dry_run, print per-host TPU pod commands;
    num_devices: the device count for the mesh checks (default: what the mesh implies); train_fn:
    `train(cfg, workdir) -> TrainResult` (default `interaction_jax.train.loop.train`, imported only
    when a run starts, with `progress` bars or not). Raises SweepError (a ConfigError) before anything
    runs when a run's config is bad. Returns one SweepRun per run.
    """
    out = out if out is not None else sys.stdout
    if pod is None and (zone or hosts):
        raise SweepError("--zone" if zone else "--hosts", "only applies to a TPU pod", "add --pod NAME --dry-run")
    if pod is not None and not dry_run:
        raise SweepError(
            "--pod",
            "pod runs are launched by the printed per-host commands, not from here",
            "add --dry-run and run the commands it prints",
        )
    sweep = load_sweep(path)
    preset_name = preset or sweep.preset
    mesh_path = mesh or sweep.mesh
    layout = None
    if pod is not None:
        layout = pod_layout(base_config(sweep, preset=preset, mesh=mesh).mesh, hosts=hosts, num_devices=num_devices)
        num_devices = layout[0]
    planned = plan_runs(sweep, preset=preset, mesh=mesh, sets=sets, workdir_root=workdir_root, num_devices=num_devices)
    if dry_run:
        return print_dry_run(
            sweep,
            planned,
            preset=preset_name,
            mesh=mesh_path,
            out=out,
            workdir_root=workdir_root,
            pod=pod,
            zone=zone,
            layout=layout,
        )
    extra = {"preset": preset_name, "mesh": mesh_path, "extra_sets": list(sets)}
    summary = f"{workdir_root.rstrip('/')}/{sweep.name}/summary.json"
    return run_local(sweep, planned, train_fn=train_fn, out=out, summary_path=summary, extra=extra, progress=progress)
