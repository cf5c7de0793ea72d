"""What every op's bench shares: timing, the machine's roofline, and the table.

Times are medians over `iters` calls after a warm-up (compilation excluded), each call waited for.
The roofline uses the *measured* memory bandwidth (a device-to-device copy) and the chip's data-sheet
peak matmul throughput where it is known.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (vendor data sheets; SXM parts for NVIDIA).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


def peak_flops(kind: str | None = None) -> float | None:
    kind = (kind or jax.devices()[0].device_kind).lower()
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind), None)


def time_fn(fn: Callable, *args, iters: int = 10) -> float:
    """Median seconds of `fn(*args)` (jitted by the caller), after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured_bandwidth(nbytes: int | None = None) -> float:
    """Bytes/s of a device copy (read + write) of `nbytes` (default 1 GiB on accelerators, 64 MiB on CPU)."""
    nbytes = nbytes or (1 << 30 if jax.default_backend() != "cpu" else 1 << 26)
    x = jnp.ones((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda x: x * 1.0)
    return 2 * nbytes / time_fn(copy, x, iters=5)


def device_line() -> str:
    d = jax.devices()[0]
    note = "" if jax.default_backend() != "cpu" else " — CPU: Pallas runs interpreted, timings are not kernel speed"
    return f"{d.device_kind} ×{jax.device_count()} ({jax.default_backend()}) · jax {jax.__version__}{note}"


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec); a missing or None value prints as —."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["—" if r.get(k) is None else format(r[k], f) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def write_json(path: str | Path, record: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
