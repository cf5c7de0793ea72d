"""The kernel bodies of split-KV attention, shared by the GPU and TPU variants (only their plumbing differs).

Every program sees blocks of fixed shapes — one query's G heads × D, one split of the cache — so a
query's result is computed by the same operations on the same shapes whatever T, B or the cache
capacity is: that is what makes it invariant, bit for bit.

Written for both compilers at once: every value is 2-D (Mosaic cannot lay out 1-D masks, and
reshaping one to a column is a shape cast it refuses), the partial max and normaliser are [G, 1]
columns, QK and PV are `dot_general`s (MXU / tensor cores) in float32 at HIGHEST precision (TF32 or
a single bf16 pass would not meet the float32 tolerances), and the combine walks the splits through
the refs, never slicing a loaded value (Triton cannot).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.split_kv_attention.reference import NEG_INF

HIGHEST = jax.lax.Precision.HIGHEST


def _visible(first_slot, limit, shape, axis):
    """The visible slots of a block as a 2-D mask (`axis` runs along the block's slots)."""
    return first_slot + jax.lax.broadcasted_iota(jnp.int32, shape, axis) <= limit


def online_block(carry, q, k, v, first_slot, limit, scale):
    """One block of the online softmax: q [G, D], k, v [N, D] (float32); m, denom [G, 1], acc [G, D].

    A block with nothing visible leaves the carry exactly as it was; masked slots add exactly zero
    (their values are zeroed too: 0 · NaN would be NaN)."""
    m, denom, acc = carry
    n = k.shape[0]
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=HIGHEST) * scale  # [G, N]
    visible = _visible(first_slot, limit, (1, n), 1)
    scores = jnp.where(visible, scores, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(scores, axis=1, keepdims=True))
    alpha = jnp.where(m == NEG_INF, 0.0, jnp.exp(m - m_new))
    p = jnp.where(visible, jnp.exp(scores - m_new), 0.0)
    v = jnp.where(_visible(first_slot, limit, (n, 1), 0), v, 0.0)
    denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + jnp.dot(p, v, precision=HIGHEST)
    return m_new, denom, acc


def split_partial(limit, q, k_ref, v_ref, split, *, split_size: int, block_kv: int, scale: float, head=None):
    """Online softmax of one query (q [G, D]) over one split → (m, denom, acc): refs [split_size, D],
    or [split_size, Hkv, D] read at KV head `head` (a strided load; the TPU reads the cache in place).

    Blocks wholly past `limit` would leave the partials exactly as they are, so they are not read.
    """
    first = split * split_size
    # `lax.div` of a non-negative value, not `//`: floor division lowers through `sign`, which Mosaic
    # lowers by asking the default device's TPU generation (there is none when compiling deviceless).
    seen = jax.lax.div(jnp.maximum(limit - first, -1) + block_kv, block_kv)  # blocks up to `limit`
    needed = jnp.minimum(seen, split_size // block_kv)
    g, d = q.shape

    def body(j, carry):
        rows = pl.ds(pl.multiple_of(j * block_kv, block_kv), block_kv)
        at = (rows, slice(None)) if head is None else (rows, head, slice(None))
        k = k_ref[at].astype(jnp.float32)
        v = v_ref[at].astype(jnp.float32)
        return online_block(carry, q, k, v, first + j * block_kv, limit, scale)

    init = (jnp.full((g, 1), NEG_INF, jnp.float32), jnp.zeros((g, 1), jnp.float32), jnp.zeros((g, d), jnp.float32))
    return jax.lax.fori_loop(0, needed, body, init)


def combine_kernel(m_ref, l_ref, acc_ref, o_ref):
    """One query's splits, combined left to right: m, denom [NS, G, 1], acc [NS, G, D] → o [G, D]."""

    def body(s, carry):
        m_run, l_run, acc_run = carry
        m_s, l_s, acc_s = m_ref[s], l_ref[s], acc_ref[s]
        m_new = jnp.maximum(m_run, m_s)
        a = jnp.where(m_run == NEG_INF, 0.0, jnp.exp(m_run - m_new))
        b = jnp.where(m_s == NEG_INF, 0.0, jnp.exp(m_s - m_new))
        return m_new, a * l_run + b * l_s, a * acc_run + b * acc_s

    _, l_run, acc_run = jax.lax.fori_loop(1, m_ref.shape[0], body, (m_ref[0], l_ref[0], acc_ref[0]))
    out = jnp.where(l_run > 0, acc_run / jnp.where(l_run > 0, l_run, 1.0), 0.0)
    o_ref[...] = out.astype(o_ref.dtype)
