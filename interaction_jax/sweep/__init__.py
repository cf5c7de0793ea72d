"""Sweeps: run a Python file of config overrides one run after another, or print pod launch commands.

`interaction-jax sweep experiments/chunk_size.py` loads the sweep file, builds and validates the config
of every run (a bad sweep fails before the first run starts, with a `ConfigError` naming the run),
then trains the runs one after another; `--dry-run` prints their launch commands instead, with
`--pod NAME` one per host of a TPU pod.

- `spec`: the sweep file format, loading it, run names, and every run's validated config;
- `local`: training the runs on this machine, one after another;
- `pod`: a dry run's launch commands, locally or per host of a (multislice) TPU pod;
- `summary`: what became of the runs (`SweepRun`), `summary.json` and the table;
- `command`: `run_sweep_command`, what the `interaction-jax sweep` command calls.
"""

from interaction_jax.sweep.command import run_sweep_command
from interaction_jax.sweep.local import TrainFn, default_train_fn, run_local
from interaction_jax.sweep.pod import TPU_CHIPS_PER_HOST, pod_commands, pod_layout, print_dry_run, train_argv
from interaction_jax.sweep.spec import (
    DEFAULT_PRESET,
    DEFAULT_WORKDIR_ROOT,
    PlannedRun,
    Sweep,
    SweepError,
    assignment,
    base_config,
    load_sweep,
    plan_runs,
    run_name,
)
from interaction_jax.sweep.summary import SweepRun, format_table, summary_dict, write_summary

__all__ = [
    "DEFAULT_PRESET",
    "DEFAULT_WORKDIR_ROOT",
    "TPU_CHIPS_PER_HOST",
    "PlannedRun",
    "Sweep",
    "SweepError",
    "SweepRun",
    "TrainFn",
    "assignment",
    "base_config",
    "default_train_fn",
    "format_table",
    "load_sweep",
    "plan_runs",
    "pod_commands",
    "pod_layout",
    "print_dry_run",
    "run_local",
    "run_name",
    "run_sweep_command",
    "summary_dict",
    "train_argv",
    "write_summary",
]
