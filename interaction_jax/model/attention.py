"""GQA self-attention with RoPE on global positions, reading and writing the explicit KV cache.

Every call writes its new keys/values into the cache first and then attends over the whole cache
with a causal mask on cache slots. Training (one window, empty cache) and serving (one chunk or
one token at a time) therefore run the same maths on the same layout.

Applied with the `intermediates` collection mutable (`step`'s probe), it also sows its attention
weights float32 [B, H, T, S] (`kernels.attention_weights`) under the name `attention`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from interaction_jax.config import KernelsConfig, ModelConfig
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import kernels
from interaction_jax.model.layers import compute_dtype, param


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half form) of x [B, T, H, D] at integer positions [B, T]."""
    d = x.shape[-1]
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


attend = kernels.xla_attend  # the XLA attention maths (kernels.attend chooses per config)


class Attention(nn.Module):
    cfg: ModelConfig
    kernels: KernelsConfig = kernels.FAST
    window: bool = False  # every call is a whole window from an empty cache (`kernels.attend`)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, slots: jax.Array, layer_cache: dict):
        c = self.cfg
        dtype = compute_dtype(c.dtype)
        wq = param(self, "wq", (c.d_model, c.n_heads, c.head_dim), ("embed", "heads", "head_dim"))
        wk = param(self, "wk", (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"))
        wv = param(self, "wv", (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"))
        wo = param(self, "wo", (c.n_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"))
        x = x.astype(dtype)
        kc = self.kernels

        def project(w):  # [d, heads, head_dim] → [B, T, heads, head_dim]
            return kernels.matmul(x, w.reshape(w.shape[0], -1), kc).reshape(*x.shape[:2], *w.shape[1:])

        # Named for the remat policies that save them (`transformer.REMAT_POLICIES`); no effect otherwise.
        q, k, v = (
            checkpoint_name(project(w), n) for w, n in ((wq, "query_proj"), (wk, "key_proj"), (wv, "value_proj"))
        )
        q = nn.with_logical_constraint(rope(q, positions, c.rope_theta), ("act_batch", "act_len", "act_heads", None))
        k = rope(k, positions, c.rope_theta)
        new_cache = {"k": kv_cache.write(layer_cache["k"], k, slots), "v": kv_cache.write(layer_cache["v"], v, slots)}
        new_cache = {n: nn.with_logical_constraint(a, kv_cache.CACHE_AXES) for n, a in new_cache.items()}
        out = kernels.attend(q, new_cache["k"], new_cache["v"], slots, kc, self.window)
        if self.is_mutable_collection("intermediates"):  # `step(..., probe=True)`; otherwise not even traced
            # The blocked window path and the kernels never form the weights: the plain unblocked maths over
            # the written keys gives the ones they use.
            self.sow("intermediates", "attention", kernels.attention_weights(q, new_cache["k"], slots))
        out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))
        y = kernels.matmul(out.reshape(*out.shape[:2], -1), wo.reshape(-1, wo.shape[-1]), kc)
        return checkpoint_name(y, "out_proj"), new_cache
