"""GQA self-attention with RoPE on global positions, reading and writing the explicit KV cache.

Every call writes its new keys/values into the cache first and then attends over the whole cache
with a causal mask on cache slots. Training (one window, empty cache) and serving (one chunk or
one token at a time) therefore run the same maths on the same layout.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import ModelConfig
from interaction_jax.model import cache as kv_cache
from interaction_jax.model.layers import compute_dtype, param


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half form) of x [B, T, H, D] at integer positions [B, T]."""
    d = x.shape[-1]
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array) -> jax.Array:
    """Causal GQA attention of q [B, T, H, D] over cache k, v [B, S, Hkv, D].

    Query t sees cache slots ≤ query_slots[b, t]. Masked scores are removed with `where` (not an
    additive bias) so masked slots contribute exactly zero. Softmax runs in float32. A query at a slot
    ≥ S is an empty token (nothing written); its output is unspecified.
    """
    b, t, h, d = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, t, hkv, h // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * d**-0.5
    visible = jnp.arange(k.shape[1])[None, None, :] <= query_slots[:, :, None]  # [B, T, S]
    visible = visible[:, None, None]
    scores = jnp.where(visible, scores, -jnp.inf)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.where(visible, jnp.exp(scores - jnp.maximum(peak, -1e30)), 0.0)
    weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-30)
    # A masked weight is exactly 0, but 0 · NaN is NaN: zero the values past the last slot any query
    # of the row can see (unwritten or stale), so nothing left there can reach the output. Slots up to
    # that point were all written by this or an earlier call.
    last_seen = jnp.max(jnp.where(query_slots < k.shape[1], query_slots, -1), axis=1)  # [B]
    live = jnp.arange(v.shape[1])[None, :] <= last_seen[:, None]
    v = jnp.where(live[:, :, None, None], v, jnp.zeros((), v.dtype))
    out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, slots: jax.Array, layer_cache: dict):
        c = self.cfg
        dtype = compute_dtype(c.dtype)
        wq = param(self, "wq", (c.d_model, c.n_heads, c.head_dim), ("embed", "heads", "head_dim"))
        wk = param(self, "wk", (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"))
        wv = param(self, "wv", (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"))
        wo = param(self, "wo", (c.n_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"))
        x = x.astype(dtype)
        q = jnp.einsum("btd,dhk->bthk", x, wq.astype(dtype))
        k = jnp.einsum("btd,dhk->bthk", x, wk.astype(dtype))
        v = jnp.einsum("btd,dhk->bthk", x, wv.astype(dtype))
        q = nn.with_logical_constraint(rope(q, positions, c.rope_theta), ("act_batch", "act_len", "act_heads", None))
        k = rope(k, positions, c.rope_theta)
        new_cache = {"k": kv_cache.write(layer_cache["k"], k, slots), "v": kv_cache.write(layer_cache["v"], v, slots)}
        new_cache = {n: nn.with_logical_constraint(a, kv_cache.CACHE_AXES) for n, a in new_cache.items()}
        out = attend(q, new_cache["k"], new_cache["v"], slots)
        out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))
        y = jnp.einsum("bthk,hkd->btd", out, wo.astype(dtype))
        return y, new_cache
