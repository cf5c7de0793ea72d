"""The batch-invariant matmul against XLA's dot on training shapes (and a few decode-sized ones)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.benchmarking import peak_flops, time_fn
from pallas_kernels.bi_matmul.api import MatmulConfig, bi_matmul


def shapes(quick: bool) -> list[tuple[int, int, int]]:
    """(M, K, N)."""
    if quick:
        return [(64, 128, 128), (256, 256, 256)]
    return [(m, k, n) for m in (16, 4096, 16384) for k, n in ((1024, 4096), (4096, 1024), (4096, 4096))]


def run(*, implementation: str, quick: bool, bandwidth: float, iters: int) -> list[dict]:
    dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    config = MatmulConfig()
    peak = peak_flops()
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes(quick):
        x = jnp.asarray(rng.standard_normal((m, k)), dtype)
        w = jnp.asarray(rng.standard_normal((k, n)), dtype)
        ours = jax.jit(lambda x, w: bi_matmul(x, w, config=config, implementation=implementation))
        seconds = time_fn(ours, x, w, iters=iters)
        xla = time_fn(jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(dtype)), x, w)
        flops = 2 * m * k * n
        nbytes = (m * k + k * n + m * n) * jnp.dtype(dtype).itemsize
        achieved = flops / seconds
        rows.append(
            {
                "M": m,
                "K": k,
                "N": n,
                "ms": 1e3 * seconds,
                "TFLOP/s": achieved / 1e12,
                "GB/s": nbytes / seconds / 1e9,
                "of peak": None if peak is None else achieved / peak,
                "xla ms": 1e3 * xla,
                "of xla": xla / seconds,
            }
        )
    return rows


COLUMNS = [
    ("M", "M", "d"),
    ("K", "K", "d"),
    ("N", "N", "d"),
    ("ms", "ms", ".3f"),
    ("TFLOP/s", "TFLOP/s", ".2f"),
    ("GB/s", "GB/s", ".1f"),
    ("of peak", "of peak", ".0%"),
    ("xla ms", "XLA ms", ".3f"),
    ("of xla", "of XLA", ".0%"),
]
