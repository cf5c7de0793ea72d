"""A dry run's launch commands: each run's `interaction-jax train`, locally or on every host of a TPU pod.

Without a pod the dry run prints each run's train command. With `--pod NAME` it prints, for every run,
one `gcloud compute tpus tpu-vm ssh NAME --worker=I` command per host of a multi-host TPU pod. Every
host runs the same `interaction-jax train --distributed …`: `jax.distributed.initialize()` finds the
coordinator on Cloud TPU by itself. The host count is the mesh's device count over TPU_CHIPS_PER_HOST
(--hosts overrides it; a mesh with a -1 axis needs it); a multislice mesh (dcn sizes) addresses its
slices as NAME-0, NAME-1, … (a queued resource's nodes). The output is a shell script: each run's
hosts start in the background (`&`) and `wait` ends the run before the next one starts. A dry run
never trains and never asks JAX for devices; with `--compile` each run's part of the script also
holds its deviceless compile's memory and step-time lines (`sweep.deviceless`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from interaction_jax import config as config_lib
from interaction_jax.sweep.deviceless import RunCompile
from interaction_jax.sweep.spec import DEFAULT_WORKDIR_ROOT, PlannedRun, Sweep, SweepError
from interaction_jax.sweep.summary import SweepRun

Check = Callable[[PlannedRun], RunCompile]

# Chips (= JAX devices) per host VM of a multi-host TPU v4, v5e or v5p slice. Single-host slices with
# another count (v5e-8: 8 chips on one host) need `hosts=1` (--hosts 1).
TPU_CHIPS_PER_HOST = 4
POD_REPO_DIR = "interaction-jax"  # where the repository is checked out on every pod host (home-relative)


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


def _print_run(
    number: str, run: PlannedRun, commands: list[str], script: list[str], check: Check | None, out: TextIO
) -> SweepRun:
    """One run's part of the script: its heading, what `check` says of it, then its script lines
    (commented out when the check says it cannot run)."""
    print(f"\n# run {number}: {run.name}", file=out)
    compiled = check(run) if check else None
    for line in compiled.lines if compiled else ():
        print(f"# {line}".rstrip(), file=out)
    if compiled and compiled.does_not_fit:
        print("# does not fit: not launched", file=out)
        for line in script:
            print(f"# {line}", file=out)
        return SweepRun(run.name, run.overrides, run.workdir, "failed", error=compiled.does_not_fit, commands=commands)
    for line in script:
        print(line, file=out)
    return SweepRun(run.name, run.overrides, run.workdir, "planned", commands=commands)


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
    check: Check | None = None,
) -> list[SweepRun]:
    """Print the sweep's launch script; `check(run)` (`sweep --compile`: the deviceless compile) adds
    lines to each run's part and may hold a run back (status failed, its commands commented out)."""
    results = []
    if pod is None:
        print(f"# sweep {sweep.name}: {len(planned)} runs, one after another on this machine", file=out)
        for i, run in enumerate(planned):
            command = shlex.join(train_argv(run, preset=preset, mesh=mesh))
            results.append(_print_run(f"{i + 1}/{len(planned)}", run, [command], [command], check, out))
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
        script = [*(f"{command} &" for command in commands), "wait"]
        results.append(_print_run(f"{i + 1}/{len(planned)}", run, commands, script, check, out))
    return results
