"""The decoder: embeddings → pre-norm blocks (GQA attention + MoE or dense SwiGLU) → heads.

One Linen module, used as pure functions through `init`/`apply`. Its methods are the model's
entry points; `model/step.py` is the only caller.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import KernelsConfig, ModelConfig, StreamConfig
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model.attention import Attention
from interaction_jax.model.embed import Embedder
from interaction_jax.model.heads import FlowHead
from interaction_jax.model.layers import MLP, Dense, RMSNorm
from interaction_jax.model.moe import MoE


def is_dense_layer(cfg: ModelConfig, layer: int) -> bool:
    """Layers n, 2n, … (1-based) are dense when dense_every = n > 0; the rest are MoE."""
    return cfg.dense_every > 0 and (layer + 1) % cfg.dense_every == 0


class Block(nn.Module):
    cfg: ModelConfig
    dense: bool
    kernels: KernelsConfig = kernels_lib.FAST

    @nn.compact
    def __call__(self, x, positions, slots, token_mask, layer_cache):
        c, kc = self.cfg, self.kernels
        h, layer_cache = Attention(c, kc, name="attn")(
            RMSNorm(c.norm_eps, kernels=kc, name="attn_norm")(x), positions, slots, layer_cache
        )
        x = x + h.astype(x.dtype)
        y = RMSNorm(c.norm_eps, kernels=kc, name="ffn_norm")(x)
        if self.dense:
            y, aux = MLP(c.dense_mlp, c.dtype, kc, name="mlp")(y), {}
        else:
            y, aux = MoE(c, kc, name="moe")(y, token_mask)
        x = x + y.astype(x.dtype)
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed")), layer_cache, aux


class InteractionModel(nn.Module):
    model: ModelConfig
    stream: StreamConfig
    kernels: KernelsConfig = kernels_lib.FAST

    def setup(self):
        c, kc = self.model, self.kernels
        block = nn.remat(Block) if c.remat == "block" else Block
        self.embed = Embedder(c, self.stream)
        self.blocks = [block(c, is_dense_layer(c, i), kc, name=f"block{i}") for i in range(c.n_layers)]
        self.final_norm = RMSNorm(c.norm_eps, kernels=kc)
        self.text_head = Dense(c.vocab_size, ("embed", "vocab"), c.dtype, kernels=kc)
        s = self.stream
        self.flow_head = FlowHead(s.stack * s.n_mels, c.flow_hidden, c.flow_blocks, c.dtype, kc)

    def __call__(self, batch: dict, cache: dict, slots: jax.Array):
        """Hidden states [B, T, D] (float32) of `batch` given `cache`; the updated layer caches; aux losses."""
        x = self.embed(batch)
        token_mask = slots < cache["layers"][0]["k"].shape[1]
        layers, aux = [], []
        for block, layer_cache in zip(self.blocks, cache["layers"], strict=True):
            x, layer_cache, layer_aux = block(x, batch["position"], slots, token_mask, layer_cache)
            layers.append(layer_cache)
            aux.append(layer_aux)
        moe_aux = [a for a in aux if a]
        totals = {k: sum(a[k] for a in moe_aux) / len(moe_aux) for k in moe_aux[0]} if moe_aux else {}
        return self.final_norm(x).astype(jnp.float32), tuple(layers), totals

    def text_logits(self, hidden: jax.Array) -> jax.Array:
        logits = self.text_head(hidden).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab")) if logits.ndim == 3 else logits

    def flow_velocity(self, cond: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        return self.flow_head(cond, x_t, t)

    def init_all(self, batch: dict, cache: dict, slots: jax.Array):
        """Touches every submodule once, so `init` creates all parameters."""
        hidden, _, _ = self(batch, cache, slots)
        cond = hidden[:, 0]
        x = jnp.zeros((cond.shape[0], self.stream.stack * self.stream.n_mels), jnp.float32)
        return self.text_logits(hidden), self.flow_velocity(cond, x, jnp.zeros(cond.shape[:1]))
