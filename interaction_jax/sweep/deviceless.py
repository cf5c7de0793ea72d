"""`sweep --dry-run --compile`: each run's train step compiled for the mesh's TPU topology, deviceless.

The compile is `aot.compile_plan` (what `plan --compile` runs), on the train step only: a sweep trains.
A dry run prints, per run, the report's memory and step-time lines as comments of its shell script;
a run whose step does not fit a chip's HBM gets the message instead, and its launch commands are
printed commented out, so the script never starts a run that cannot fit.
"""

from __future__ import annotations

import dataclasses

from interaction_jax.sweep.spec import PlannedRun

PROGRAMS = ("train",)
# The rows of aot.CompileReport.table() a sweep prints: HBM by region, compile time, estimated time and MFU.
ROWS = ("compile time", "HBM", "est.")


@dataclasses.dataclass(frozen=True)
class RunCompile:
    """A run's deviceless compile: the lines to print, and why it cannot run (None when it fits)."""

    lines: tuple[str, ...]
    does_not_fit: str | None = None


def require_libtpu() -> None:
    """Raise aot.LibtpuMissing (with the install line) before anything is planned or printed."""
    from interaction_jax import aot  # lazily: aot imports JAX, which a plain dry run never loads

    aot.require_libtpu()


def memory_and_time_lines(table: str) -> tuple[str, ...]:
    """The heading, the column names and the memory / time rows of a CompileReport table, with the
    line that says the times are estimates."""
    lines = table.splitlines()
    head, names, rows = lines[0], lines[1], lines[2:]
    kept = [line for line in rows if line.startswith((*ROWS, "ESTIMATES"))]
    return (head, names, *kept)


def compile_run(run: PlannedRun) -> RunCompile:
    """Compile the run's train step for its mesh's topology and report it (aot.compile_plan)."""
    from interaction_jax import aot

    report = aot.compile_plan(run.cfg, PROGRAMS)
    if report.does_not_fit:
        message = "\n".join(report.does_not_fit)
        return RunCompile(tuple(message.splitlines()), message)
    return RunCompile(memory_and_time_lines(report.table()))
