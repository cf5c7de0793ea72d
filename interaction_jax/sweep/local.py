"""Training a sweep's runs on this machine, one after another.

Each run trains in its own workdir `<--workdir>/<sweep>/<run>`; the summary table is printed after
every run and `<--workdir>/<sweep>/summary.json` rewritten. Training resumes from a workdir's latest
checkpoint, so running the same sweep again continues it. A run that raises is reported as failed and
the sweep goes on; a preempted run (SIGTERM, time limit) stops the sweep.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from interaction_jax import config as config_lib
from interaction_jax.sweep.spec import PlannedRun, Sweep
from interaction_jax.sweep.summary import SweepRun, format_table, write_summary

TrainFn = Callable[[config_lib.Config, str], Any]


def default_train_fn(progress: bool = True) -> TrainFn:
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
    train = train_fn if train_fn is not None else default_train_fn(progress)
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
