"""What became of a sweep's runs: `SweepRun`, `summary.json` and the summary table."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from interaction_jax.sweep.spec import PlannedRun, Sweep, short_keys, yaml_value


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


def _plain_value(value: Any) -> Any:
    return [_plain_value(v) for v in value] if isinstance(value, (list, tuple)) else _plain(value)


# ----------------------------------------------------------------------------------------------
# summary.json


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
    short = short_keys(sweep.swept)
    header = ["run", *(short[k] for k in sweep.swept), "steps", "loss", "held-out", "tokens/s", "time", "status"]
    right = [False] + [True] * (len(header) - 2) + [False]
    rows = []
    for r in results:
        m = _metrics(r.result) if r.result is not None else {}
        status = r.status if r.error is None else f"{r.status}: {_one_line(r.error)}"
        rows.append(
            [
                r.name,
                *(yaml_value(k, r.overrides[k]) if k in r.overrides else "—" for k in sweep.swept),
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
