"""The decoder: embeddings → pre-norm blocks (GQA attention + MoE or dense SwiGLU) → heads.

One Linen module, used as pure functions through `init`/`apply`. Its methods are the model's
entry points; `model/step.py` is the only caller.

Layer stack: unrolled (one `block{i}` per layer) or, with `model.scan_layers`, one `nn.scan` over
parameters stacked by layer, so the compiled program holds one block body whatever the depth. Layers
are not all alike (`dense_every = n` makes every n-th a dense SwiGLU), so the scan runs over the
repeating group of n layers, as MaxText does for interleaved patterns: `layers/block{j}` holds layer
g·n + j of every group g, stacked on a leading "layers" axis; the n_layers mod n layers left over
(all MoE) follow unrolled under their own `block{i}` names. `stack_layers` / `unstack_layers` convert
between the two parameter layouts, `cache.stack_cache` / `cache.unstack_cache` between the caches'.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import KernelsConfig, ModelConfig, StreamConfig
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model.attention import Attention
from interaction_jax.model.embed import Embedder
from interaction_jax.model.heads import FlowHead
from interaction_jax.model.layers import MLP, Dense, RMSNorm
from interaction_jax.model.moe import MoE

STACKED = "layers"  # the scanned blocks' parameter subtree, and the logical name of its leading axis

_QKV = ("query_proj", "key_proj", "value_proj")  # checkpoint names in `attention.Attention`
# `model.remat` → the `jax.checkpoint` policy of each block (None: save nothing, recompute the block),
# after MaxText's `remat_policy` values; "none" is no remat at all.
REMAT_POLICIES = {
    "block": None,
    "full": None,
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*_QKV),
    "save_out_proj": jax.checkpoint_policies.save_only_these_names("out_proj"),
    "save_dot_except_mlp": jax.checkpoint_policies.save_only_these_names(*_QKV, "out_proj"),
}


def is_dense_layer(cfg: ModelConfig, layer: int) -> bool:
    """Layers n, 2n, … (1-based) are dense when dense_every = n > 0; the rest are MoE."""
    return cfg.dense_every > 0 and (layer + 1) % cfg.dense_every == 0


class Block(nn.Module):
    cfg: ModelConfig
    dense: bool
    kernels: KernelsConfig = kernels_lib.FAST
    window: bool = False  # `InteractionModel.window`

    @nn.compact
    def __call__(self, x, positions, slots, token_mask, layer_cache):
        c, kc = self.cfg, self.kernels
        h, layer_cache = Attention(c, kc, self.window, name="attn")(
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


def block_class(cfg: ModelConfig, scanned: bool) -> type[nn.Module]:
    """`Block`, under `nn.remat` with the policy `cfg.remat` names (the same for scanned and unrolled
    blocks; inside a scan, CSE across iterations cannot happen, so it is not prevented there)."""
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not scanned)


def group_size(cfg: ModelConfig) -> int:
    """Layers per group of the layer scan: one period of the dense/MoE pattern."""
    return cfg.dense_every if cfg.dense_every > 0 else 1


def scanned_groups(cfg: ModelConfig) -> int:
    """How many groups of `group_size` layers the scan runs over when `scan_layers` is on (layers
    [0, groups · group_size) are scanned, the rest unrolled)."""
    return cfg.n_layers // group_size(cfg)


class BlockGroup(nn.Module):
    """`group_size` consecutive blocks: the body of the layer scan over groups.

    The carry is (hidden states, the stacked KV cache): each layer reads its [B, S, Hkv, Dh] slice and
    writes it back in place (`dynamic_update_slice` on the loop's own buffer), so a serving tick holds
    one cache, not a scanned input and a scanned output. Each block sees only its slice (under remat
    too: what a block saves is its own layer's cache, never the stack).
    """

    cfg: ModelConfig
    kernels: KernelsConfig = kernels_lib.FAST
    window: bool = False  # `InteractionModel.window`

    @nn.compact
    def __call__(self, carry, group, positions, slots, token_mask):
        c = self.cfg
        x, stacked = carry
        block = block_class(c, scanned=True)
        aux = []
        for j in range(group_size(c)):
            layer = group * group_size(c) + j
            layer_cache = {k: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False) for k, a in stacked.items()}
            # Layer g·n + j is dense exactly when layer j is: the pattern repeats every n layers.
            x, layer_cache, layer_aux = block(c, is_dense_layer(c, j), self.kernels, self.window, name=f"block{j}")(
                x, positions, slots, token_mask, layer_cache
            )
            stacked = {k: jax.lax.dynamic_update_index_in_dim(a, layer_cache[k], layer, 0) for k, a in stacked.items()}
            if layer_aux:
                aux.append(layer_aux)
        stacked = {k: nn.with_logical_constraint(a, kv_cache.STACKED_CACHE_AXES) for k, a in stacked.items()}
        return (x, stacked), aux


def _moe_totals(aux: list[dict]) -> dict:
    """The mean over MoE layers of each aux loss; an entry is one layer's scalars or a scan's [groups]."""
    if not aux:
        return {}
    n_moe = sum(a["load_balance"].size for a in aux)
    return {k: sum(jnp.sum(a[k]) if a[k].ndim else a[k] for a in aux) / n_moe for k in aux[0]}


class InteractionModel(nn.Module):
    model: ModelConfig
    stream: StreamConfig
    kernels: KernelsConfig = kernels_lib.FAST
    # Every call is a whole window from an empty cache (training's `step.window_forward`): attention may
    # skip the keys past each query block (`kernels.attend`). Same parameters, same maths.
    window: bool = False

    def setup(self):
        c, kc = self.model, self.kernels
        self.embed = Embedder(c, self.stream)
        scanned = scanned_groups(c) * group_size(c) if c.scan_layers else 0  # layers under the scan
        if scanned:
            self.layers = nn.scan(
                BlockGroup,
                # The probe's sown values (`step(..., probe=True)`) stack by group like the parameters.
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=scanned_groups(c),
                metadata_params={nn.PARTITION_NAME: STACKED},
            )(c, kc, self.window, name=STACKED)
        block = block_class(c, scanned=False)
        self.blocks = [
            block(c, is_dense_layer(c, i), kc, self.window, name=f"block{i}") for i in range(scanned, c.n_layers)
        ]
        self.final_norm = RMSNorm(c.norm_eps, kernels=kc)
        self.text_head = Dense(c.vocab_size, ("embed", "vocab"), c.dtype, kernels=kc)
        s = self.stream
        self.flow_head = FlowHead(s.stack * s.n_mels, c.flow_hidden, c.flow_blocks, c.dtype, kc)
        if c.vap_horizon:
            self.vap_head = Dense(c.vap_horizon, ("embed", None), c.dtype, use_bias=True, kernels=kc)

    def __call__(self, batch: dict, cache: dict, slots: jax.Array):
        """Hidden states [B, T, D] (float32) of `batch` given `cache`; the updated layer caches; aux losses."""
        x = self.embed(batch)
        positions = batch["position"]
        token_mask = slots < kv_cache.capacity(cache)
        if not self.model.scan_layers:
            layers, aux = [], []
            for block, layer_cache in zip(self.blocks, cache["layers"], strict=True):
                x, layer_cache, layer_aux = block(x, positions, slots, token_mask, layer_cache)
                layers.append(layer_cache)
                aux.append(layer_aux)
            return self.final_norm(x).astype(jnp.float32), tuple(layers), _moe_totals([a for a in aux if a])
        stacked, aux = cache["layers"], []
        g = scanned_groups(self.model)
        if g:
            (x, stacked), aux = self.layers((x, stacked), jnp.arange(g), positions, slots, token_mask)
        for i, block in enumerate(self.blocks, start=g * group_size(self.model)):  # the leftover layers
            x, layer_cache, layer_aux = block(x, positions, slots, token_mask, {k: a[i] for k, a in stacked.items()})
            stacked = {k: a.at[i].set(layer_cache[k]) for k, a in stacked.items()}
            aux += [layer_aux] if layer_aux else []
        layers = {k: nn.with_logical_constraint(a, kv_cache.STACKED_CACHE_AXES) for k, a in stacked.items()}
        return self.final_norm(x).astype(jnp.float32), layers, _moe_totals(aux)

    def text_logits(self, hidden: jax.Array) -> jax.Array:
        logits = self.text_head(hidden).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab")) if logits.ndim == 3 else logits

    def flow_velocity(self, cond: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        return self.flow_head(cond, x_t, t)

    def vap_logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits [..., vap_horizon]: the share of each of the next chunks the user speaks."""
        return self.vap_head(hidden).astype(jnp.float32)

    def init_all(self, batch: dict, cache: dict, slots: jax.Array):
        """Touches every submodule once, so `init` creates all parameters."""
        hidden, _, _ = self(batch, cache, slots)
        cond = hidden[:, 0]
        x = jnp.zeros((cond.shape[0], self.stream.stack * self.stream.n_mels), jnp.float32)
        vap = self.vap_logits(hidden) if self.model.vap_horizon else None
        return self.text_logits(hidden), self.flow_velocity(cond, x, jnp.zeros(cond.shape[:1])), vap


# ----------------------------------------------------------------------------------------------
# The two parameter layouts


def stack_layers(params: dict, cfg: ModelConfig) -> dict:
    """Unrolled parameters (`block0` … `block{L-1}`) → the layout of the same model with
    `scan_layers` on: `layers/block{j}` = layers j, n + j, 2n + j, … stacked on a new leading axis
    (n = `group_size`), the leftover layers unchanged. Everything else is passed through."""
    n, g = group_size(cfg), scanned_groups(cfg)
    if not g:  # fewer layers than one group: nothing is scanned
        return dict(params)
    out = {k: v for k, v in params.items() if not _is_scanned_block(k, n * g)}
    group = [[params[f"block{i * n + j}"] for i in range(g)] for j in range(n)]
    out[STACKED] = {f"block{j}": jax.tree.map(lambda *a: jnp.stack(a), *layers) for j, layers in enumerate(group)}
    return out


def unstack_layers(params: dict, cfg: ModelConfig) -> dict:
    """The inverse of `stack_layers`: scanned parameters → one `block{i}` per layer."""
    n, g = group_size(cfg), scanned_groups(cfg)
    out = {k: v for k, v in params.items() if k != STACKED}
    for j in range(n if g else 0):
        for i in range(g):
            out[f"block{i * n + j}"] = jax.tree.map(lambda a, i=i: a[i], params[STACKED][f"block{j}"])
    return out


def layer_intermediates(tree: dict, cfg: ModelConfig, layer: int) -> dict:
    """Layer `layer`'s subtree of a collection laid out like the parameters (the `intermediates` an
    apply with it mutable returns): `block{layer}`, or its group's row of `layers/block{j}` when the
    layer is under the scan."""
    n, g = group_size(cfg), scanned_groups(cfg)
    if cfg.scan_layers and layer < n * g:
        return jax.tree.map(lambda a: a[layer // n], tree[STACKED][f"block{layer % n}"])
    return tree[f"block{layer}"]


def _is_scanned_block(name: str, n_scanned: int) -> bool:
    return name.startswith("block") and name[5:].isdigit() and int(name[5:]) < n_scanned


def stacked_axes(path: tuple) -> int:
    """How many leading axes of the parameter at `path` (a `jax.tree_util` key path) stack layers: 1
    under the scanned subtree, else 0 (e.g. for rules that look at a parameter's own rank)."""
    first = path[0] if path else None
    return int(getattr(first, "key", None) == STACKED)
