"""The spec of the batch-invariant matmul: `x @ w` with float32 accumulation over fixed K blocks, in order.

out[m, n] = sum over K blocks kb = 0, 1, … of dot(x[m, kb], w[kb, n]), accumulated in float32 in
that order, never split across programs (no split-K): a row's result is a function of that row and
`w` alone. (This jnp version states the arithmetic; on CPU XLA's own dot does not keep the row
property — the Pallas variants do.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bi_matmul(x: jax.Array, w: jax.Array, *, bm: int, bn: int, bk: int, out_dtype) -> jax.Array:
    """x [M, K] @ w [K, N] with K a multiple of bk."""
    acc = jnp.zeros((x.shape[0], w.shape[1]), jnp.float32)
    for lo in range(0, x.shape[1], bk):
        acc = acc + jnp.dot(x[:, lo : lo + bk], w[lo : lo + bk], preferred_element_type=jnp.float32)
    return acc.astype(out_dtype)
