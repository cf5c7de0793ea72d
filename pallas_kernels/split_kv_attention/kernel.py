"""The kernel bodies of split-KV attention, shared by the GPU and TPU variants (only their plumbing differs).

Every program sees blocks of fixed shapes — one query's G heads × D, one split of the cache — so a
query's result is computed by the same operations on the same shapes whatever T, B or the cache
capacity is: that is what makes it invariant, bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.split_kv_attention.reference import NEG_INF, combine, online_block


def split_partial(limit, q, k_ref, v_ref, split, *, split_size: int, block_kv: int, scale: float):
    """Online softmax of one query (q [G, D]) over one split (refs [split_size, D]) → (m, denom, acc).

    Blocks wholly past `limit` would leave the partials exactly as they are, so they are not read.
    """
    first = split * split_size
    needed = jnp.clip((limit - first) // block_kv + 1, 0, split_size // block_kv)
    g, d = q.shape

    def body(j, carry):
        rows = pl.ds(pl.multiple_of(j * block_kv, block_kv), block_kv)
        k = k_ref[rows, :].astype(jnp.float32)
        v = v_ref[rows, :].astype(jnp.float32)
        return online_block(carry, q, k, v, first + j * block_kv, limit, scale)

    init = (jnp.full((g,), NEG_INF, jnp.float32), jnp.zeros((g,), jnp.float32), jnp.zeros((g, d), jnp.float32))
    return jax.lax.fori_loop(0, needed, body, init)


def combine_kernel(m_ref, l_ref, acc_ref, o_ref):
    """One query's splits, combined left to right: m, denom [NS, G], acc [NS, G, D] → o [G, D]."""
    o_ref[...] = combine(m_ref[...], l_ref[...], acc_ref[...]).astype(o_ref.dtype)
