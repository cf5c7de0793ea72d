"""`interaction-jax sweep PATH`: load the sweep, validate every run, then train them or print commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from interaction_jax.sweep import deviceless
from interaction_jax.sweep.local import TrainFn, run_local
from interaction_jax.sweep.pod import pod_layout, print_dry_run
from interaction_jax.sweep.spec import DEFAULT_WORKDIR_ROOT, SweepError, base_config, load_sweep, plan_runs
from interaction_jax.sweep.summary import SweepRun


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
    compile_step: bool = False,
    train_fn: TrainFn | None = None,
    progress: bool = True,
    out: TextIO | None = None,
) -> list[SweepRun]:
    """`interaction-jax sweep PATH`: train every run locally, or with `dry_run` print the commands.

    preset / mesh: the --preset / --mesh flags when given (None: the sweep file's PRESET / MESH); sets:
    the --set flags, applied on top of every run; workdir_root: runs train in
    `<workdir_root>/<sweep>/<run>`; pod / zone / hosts: with dry_run, print per-host TPU pod commands;
    num_devices: the device count for the mesh checks (default: what the mesh implies); compile_step:
    with dry_run, compile each run's train step deviceless for the mesh's TPU topology and print its
    memory and estimated step time (`sweep.deviceless`; a run that does not fit is held back); train_fn:
    `train(cfg, workdir) -> TrainResult` (default `interaction_jax.train.loop.train`, imported only
    when a run starts, with `progress` bars or not). Raises SweepError (a ConfigError) before anything
    runs when a run's config is bad, aot.LibtpuMissing when compile_step has no libtpu. Returns one
    SweepRun per run.
    """
    out = out if out is not None else sys.stdout
    if compile_step and not dry_run:
        raise SweepError(
            "--compile", "compiles each run's train step in place of training it", "add --dry-run (and --pod NAME)"
        )
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
    if compile_step:
        deviceless.require_libtpu()
    if dry_run:
        results = print_dry_run(
            sweep,
            planned,
            preset=preset_name,
            mesh=mesh_path,
            out=out,
            workdir_root=workdir_root,
            pod=pod,
            zone=zone,
            layout=layout,
            check=deviceless.compile_run if compile_step else None,
        )
        for r in results:
            if r.error:
                print(f"sweep --compile: run {r.name}: {r.error}", file=sys.stderr)
        return results
    extra = {"preset": preset_name, "mesh": mesh_path, "extra_sets": list(sets)}
    summary = f"{workdir_root.rstrip('/')}/{sweep.name}/summary.json"
    return run_local(sweep, planned, train_fn=train_fn, out=out, summary_path=summary, extra=extra, progress=progress)
