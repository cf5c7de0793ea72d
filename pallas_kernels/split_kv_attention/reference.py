"""The spec of split-KV attention, in pure jnp, and the plain softmax it must agree with.

Query t of row b (heads grouped over the KV heads: GQA) sees cache slot j when j <= positions[b, t]
and j < kv_lengths[b]; a query that sees no slot gives 0. The KV axis is cut into splits at absolute
multiples of `split_size`; each split runs an online softmax over blocks of `block_kv` slots, in order;
the splits' partial results (running max m, normaliser denom, unnormalised output acc) are combined left
to right. Masked scores and values are removed with `where`, so masked or unwritten slots add exactly
zero (a NaN left in an unwritten slot never reaches the output).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def last_visible(positions: jax.Array, kv_lengths: jax.Array) -> jax.Array:
    """int32 [B, T]: the last cache slot each query sees (-1: none)."""
    return jnp.minimum(positions, kv_lengths[:, None] - 1).astype(jnp.int32)


def online_block(carry, q, k, v, first_slot, limit, scale):
    """One block of the online softmax. q [..., G, D]; k, v [..., N, D]; limit [...]: the last visible slot.

    Returns the new (m [..., G], denom [..., G], acc [..., G, D]): running max, softmax normaliser and
    unnormalised output; a block with nothing visible leaves them exactly as they were.
    """
    m, denom, acc = carry
    slots = first_slot + jnp.arange(k.shape[-2])
    visible = slots <= limit[..., None]  # [..., N]
    scores = jnp.sum(q[..., :, None, :] * k[..., None, :, :], axis=-1) * scale  # [..., G, N]
    scores = jnp.where(visible[..., None, :], scores, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
    alpha = jnp.where(m == NEG_INF, 0.0, jnp.exp(m - m_new))
    p = jnp.where(visible[..., None, :], jnp.exp(scores - m_new[..., None]), 0.0)
    v = jnp.where(visible[..., :, None], v, 0.0)
    denom = alpha * denom + jnp.sum(p, axis=-1)
    acc = alpha[..., None] * acc + jnp.sum(p[..., :, :, None] * v[..., None, :, :], axis=-2)
    return m_new, denom, acc


def combine(m, denom, acc):
    """Combine per-split partials left to right: m, denom [..., NS, G], acc [..., NS, G, D] → out [..., G, D]."""
    m_run, l_run, acc_run = m[..., 0, :], denom[..., 0, :], acc[..., 0, :, :]
    for s in range(1, m.shape[-2]):
        m_s, l_s, acc_s = m[..., s, :], denom[..., s, :], acc[..., s, :, :]
        m_new = jnp.maximum(m_run, m_s)
        a = jnp.where(m_run == NEG_INF, 0.0, jnp.exp(m_run - m_new))
        b = jnp.where(m_s == NEG_INF, 0.0, jnp.exp(m_s - m_new))
        l_run = a * l_run + b * l_s
        acc_run = a[..., None] * acc_run + b[..., None] * acc_s
        m_run = m_new
    return jnp.where(l_run[..., None] > 0, acc_run / jnp.where(l_run > 0, l_run, 1.0)[..., None], 0.0)


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size: int, block_kv: int, scale: float):
    """The split-KV algorithm, vectorised over rows, queries and heads (S a multiple of split_size)."""
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    qg = q.reshape(b, t, hkv, g, d).astype(jnp.float32)
    limit = jnp.broadcast_to(last_visible(positions, kv_lengths)[:, :, None], (b, t, hkv))
    kf = jnp.moveaxis(k.astype(jnp.float32), 2, 1)[:, None]  # [B, 1, Hkv, S, D]
    vf = jnp.moveaxis(v.astype(jnp.float32), 2, 1)[:, None]
    parts = []
    for split in range(s_len // split_size):
        carry = (
            jnp.full((b, t, hkv, g), NEG_INF),
            jnp.zeros((b, t, hkv, g)),
            jnp.zeros((b, t, hkv, g, d)),
        )
        for j in range(split_size // block_kv):
            lo = split * split_size + j * block_kv
            kb, vb = kf[..., lo : lo + block_kv, :], vf[..., lo : lo + block_kv, :]
            carry = online_block(carry, qg, kb, vb, lo, limit, scale)
        parts.append(carry)
    m, denom, acc = (jnp.stack(x, axis=3) for x in zip(*parts, strict=True))
    return combine(m, denom, acc).reshape(b, t, hq, d).astype(q.dtype)


def softmax_attention(q, k, v, positions, kv_lengths, *, scale: float):
    """Plain masked softmax attention in float32: the numerical oracle."""
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, hq // hkv, d).astype(jnp.float32)
    scores = jnp.einsum("btkgd,bskd->btkgs", qg, k.astype(jnp.float32)) * scale
    slots = jnp.arange(k.shape[1])
    visible = slots[None, None, :] <= last_visible(positions, kv_lengths)[:, :, None]  # [B, T, S]
    visible = visible[:, :, None, None, :]
    scores = jnp.where(visible, scores, NEG_INF)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    w = jnp.where(visible, jnp.exp(scores - jnp.where(peak == NEG_INF, 0.0, peak)), 0.0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
    vf = jnp.where(jnp.any(visible, axis=(1, 2, 3))[:, :, None, None], v.astype(jnp.float32), 0.0)
    out = jnp.einsum("btkgs,bskd->btkgd", w, vf)
    return out.reshape(b, t, hq, d).astype(q.dtype)
