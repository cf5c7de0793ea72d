"""The kernel bodies of split-KV attention, shared by the GPU and TPU variants (only their plumbing differs).

Every program sees blocks of fixed shapes — a tile of QUERY_TILE queries' G heads × D, one split of
the cache — so a query's result is computed by the same operations on the same shapes whatever T,
B or the cache capacity is, and the rows of a dot never mix: that is what makes it invariant, bit
for bit.

Written for both compilers at once: every value is 2-D (Mosaic cannot lay out 1-D masks, and
reshaping one to a column is a shape cast it refuses), the partial max and normaliser are [R, 1]
columns (R: the tile's query rows), QK and PV are `dot_general`s (MXU / tensor cores) in float32
at HIGHEST precision (TF32 or a single bf16 pass would not meet the float32 tolerances), and the
combine walks the splits through the refs, never slicing a loaded value (Triton cannot).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.split_kv_attention.reference import NEG_INF

HIGHEST = jax.lax.Precision.HIGHEST
# Queries per program: a prefill reads each split of K/V once per 8 queries, not once per query. Fixed
# (never from T): decode pads its one query to a tile, so a query meets the same shapes either way.
QUERY_TILE = 8


def _visible(first_slot, limit, shape, axis):
    """The visible slots of a block as a 2-D mask (`axis` runs along the block's slots)."""
    return first_slot + jax.lax.broadcasted_iota(jnp.int32, shape, axis) <= limit


def online_block(carry, q, k, v, first_slot, row_limit, tile_limit, scale):
    """One block of the online softmax for a tile of R query rows: q [R, D], k, v [N, D] (float32);
    m, denom [R, 1], acc [R, D]; row_limit [R, 1] each row's last visible slot, tile_limit the tile's
    largest (the slots past it are unwritten or unseen by every row).

    For a row that sees nothing of the block the carry stays exactly as it was (alpha is exactly 1,
    the sums add exact zeros); masked slots add exactly zero, and the values past tile_limit are
    zeroed too (0 · NaN would be NaN)."""
    m, denom, acc = carry
    n = k.shape[0]
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=HIGHEST) * scale  # [R, N]
    visible = _visible(first_slot, row_limit, (1, n), 1)  # [R, N]
    scores = jnp.where(visible, scores, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(scores, axis=1, keepdims=True))
    alpha = jnp.where(m == NEG_INF, 0.0, jnp.exp(m - m_new))
    p = jnp.where(visible, jnp.exp(scores - m_new), 0.0)
    v = jnp.where(_visible(first_slot, tile_limit, (n, 1), 0), v, 0.0)
    denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + jnp.dot(p, v, precision=HIGHEST)
    return m_new, denom, acc


def split_partial(row_limit, tile_limit, q, k_ref, v_ref, split, *, split_size, block_kv, scale, head=None):
    """Online softmax of a tile of query rows (q [R, D]: its queries' G heads) over one split →
    (m, denom, acc); refs [split_size, D], or [split_size, Hkv, D] read at KV head `head` (a strided
    load: the TPU reads the cache in place).

    Blocks wholly past `tile_limit` would leave every row's partials exactly as they are, so they are
    not read; a row that sees less than the tile's last query goes through its masked blocks unchanged.
    """
    first = split * split_size
    # `lax.div` of a non-negative value, not `//`: floor division lowers through `sign`, which Mosaic
    # lowers by asking the default device's TPU generation (there is none when compiling deviceless).
    seen = jax.lax.div(jnp.maximum(tile_limit - first, -1) + block_kv, block_kv)  # blocks up to the limit
    needed = jnp.minimum(seen, split_size // block_kv)
    r, d = q.shape

    def body(j, carry):
        rows = pl.ds(pl.multiple_of(j * block_kv, block_kv), block_kv)
        at = (rows, slice(None)) if head is None else (rows, head, slice(None))
        k = k_ref[at].astype(jnp.float32)
        v = v_ref[at].astype(jnp.float32)
        return online_block(carry, q, k, v, first + j * block_kv, row_limit, tile_limit, scale)

    init = (jnp.full((r, 1), NEG_INF, jnp.float32), jnp.zeros((r, 1), jnp.float32), jnp.zeros((r, d), jnp.float32))
    return jax.lax.fori_loop(0, needed, body, init)


def query_tiles(q, limit, tile: int, group: int):
    """q [B, T, Hkv, G, D] and the last visible slots [B, T] as tiles of `tile` queries, each query's G
    heads padded to `group` rows (zero queries): q → [B, Hkv, T'·group, D] (T' = T rounded up to
    tiles), row limits [B, T'·group, 1], tile limits [B, T' / tile]. Padded queries see nothing."""
    b, t, hkv, g, d = q.shape
    pad_t = -t % tile
    q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, group - g), (0, 0)))
    q = jnp.moveaxis(q, 2, 1).reshape(b, hkv, (t + pad_t) * group, d)
    limit = jnp.pad(limit, ((0, 0), (0, pad_t)), constant_values=-1)
    rows = jnp.repeat(limit, group, axis=1)[..., None]
    return q, rows, jnp.max(limit.reshape(b, -1, tile), axis=2)


def untile(out, t: int, g: int, group: int):
    """The inverse of `query_tiles` for the output: [B, Hkv, T'·group, D] → [B, T, Hkv·G, D]."""
    b, hkv, rows, d = out.shape
    out = out.reshape(b, hkv, rows // group, group, d)[:, :, :t, :g]
    return jnp.moveaxis(out, 1, 2).reshape(b, t, hkv * g, d)


def combine_kernel(m_ref, l_ref, acc_ref, o_ref):
    """A query tile's splits, combined left to right: m, denom [NS, R, 1], acc [NS, R, D] → o [R, D]."""

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
