"""`moe_gemv` and `moe_gmm`: the SwiGLU expert FFN of a mixture of experts, dropless, bit-compatible.

    out = moe_gemv(x, expert_ids, weights, w_gate, w_up, w_down)   # few tokens (decode): gather + GEMV
    out = moe_gmm(x, expert_ids, weights, w_gate, w_up, w_down)    # many tokens: sorted, grouped matmul

x [T, D]; expert_ids int [T, k]; weights [T, k] (routing); w_gate, w_up [E, D, F]; w_down [E, F, D].
Both return float32 [T, D] and compute each (token, slot) with the same operations on tiles of the
same shape (`MoEConfig.block_rows` rows, reductions in `block_k` blocks in order), then combine the k
slots in order in float32: a token's result is bit-identical whichever kernel computed it, and does
not depend on the other tokens or their order. D and F must be multiples of block_k.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.moe import gpu, reference, tpu
from pallas_kernels.registry import resolve


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    block_rows: int = 8  # rows per tile in both kernels (gemv fills a tile with one token)
    block_k: int = 128  # reduction block along D and F

    def __post_init__(self):
        if self.block_rows <= 0 or self.block_k <= 0:
            raise ValueError(f"block sizes must be positive, got {self}")


def sorted_layout(expert_ids: jax.Array, n_experts: int, block_rows: int):
    """Assignments sorted by expert, each expert's group padded to whole tiles.

    Returns (row of each assignment [T·k], token of each padded row (-1: padding) [R_total], expert
    of each tile [R_total / block_rows]); R_total is a static bound: ceil(T·k / block_rows) + E tiles.
    """
    flat = expert_ids.reshape(-1)
    a = flat.shape[0]
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=n_experts)
    padded = -(-sizes // block_rows) * block_rows
    group_start = jnp.cumsum(padded) - padded
    rank = jnp.arange(a) - (jnp.cumsum(sizes) - sizes)[flat[order]]
    row = jnp.zeros(a, jnp.int32).at[order].set((group_start[flat[order]] + rank).astype(jnp.int32))
    n_tiles = -(-a // block_rows) + n_experts
    tile_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_tiles) * block_rows, side="right")
    tile_expert = jnp.minimum(tile_expert, n_experts - 1).astype(jnp.int32)
    token_of_row = (
        jnp.full(n_tiles * block_rows, -1, jnp.int32).at[row].set(jnp.arange(a, dtype=jnp.int32) // expert_ids.shape[1])
    )
    return row, token_of_row, tile_expert


def _gemv_path(backend, x, expert_ids, weights, w_gate, w_up, w_down, *, block_rows, block_k, interpret):
    y = backend.gemv(x, expert_ids, w_gate, w_up, w_down, block_rows=block_rows, block_k=block_k, interpret=interpret)
    return backend.combine(y, weights, interpret=interpret)


def _gmm_path(backend, x, expert_ids, weights, w_gate, w_up, w_down, *, block_rows, block_k, interpret):
    t, k = expert_ids.shape
    row, token_of_row, tile_expert = sorted_layout(expert_ids, w_gate.shape[0], block_rows)
    rows = jnp.where(token_of_row[:, None] >= 0, x[jnp.maximum(token_of_row, 0)], jnp.zeros((), x.dtype))
    y = backend.gmm(
        rows, tile_expert, w_gate, w_up, w_down, block_rows=block_rows, block_k=block_k, interpret=interpret
    )
    return backend.combine(y[row].reshape(t, k, -1), weights, interpret=interpret)


def _variants(path):
    return {
        "reference": reference.moe_ffn,
        "gpu": lambda *a, **kw: path(gpu, *a, **kw),
        "tpu": lambda *a, **kw: path(tpu, *a, **kw),
    }


GEMV_VARIANTS, GMM_VARIANTS = _variants(_gemv_path), _variants(_gmm_path)


def _call(op, variants, x, expert_ids, weights, w_gate, w_up, w_down, *, config, implementation):
    x, expert_ids, weights, w_gate, w_up, w_down = map(jnp.asarray, (x, expert_ids, weights, w_gate, w_up, w_down))
    d, f = w_gate.shape[1], w_gate.shape[2]
    if x.ndim != 2 or x.shape[1] != d or w_up.shape != w_gate.shape or w_down.shape != (w_gate.shape[0], f, d):
        raise ValueError(
            f"{op}: x [T, D], w_gate/w_up [E, D, F], w_down [E, F, D]; got {x.shape}, {w_gate.shape}, {w_down.shape}"
        )
    if expert_ids.shape != weights.shape or expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: expert_ids and weights must both be [T, k]; got {expert_ids.shape}, {weights.shape}")
    if d % config.block_k or f % config.block_k:
        raise ValueError(f"{op}: D ({d}) and F ({f}) must be multiples of block_k ({config.block_k})")
    fn = resolve(op, implementation, variants)
    kw = {"block_rows": config.block_rows, "block_k": config.block_k}
    return fn(x, expert_ids.astype(jnp.int32), weights, w_gate, w_up, w_down, **kw)


def moe_gemv(x, expert_ids, weights, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """For decoding: one program per (token, slot) reads only its expert's weights. Differentiable like
    `moe_gmm` (the backward pass is `reference.ragged_ffn`'s)."""
    forward = functools.partial(_call, "moe_gemv", GEMV_VARIANTS, config=config, implementation=implementation)
    return _with_ragged_vjp(forward)(x, expert_ids, weights, w_gate, w_up, w_down)


def moe_gmm(x, expert_ids, weights, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """Differentiable: the backward pass is `reference.ragged_ffn`'s (input gradient through the
    transposed weights, weight gradients through transposed grouped matmuls), not the kernel's."""
    forward = functools.partial(_call, "moe_gmm", GMM_VARIANTS, config=config, implementation=implementation)
    return _with_ragged_vjp(forward)(x, expert_ids, weights, w_gate, w_up, w_down)


def _with_ragged_vjp(forward):
    @jax.custom_vjp
    def fn(x, expert_ids, weights, w_gate, w_up, w_down):
        return forward(x, expert_ids, weights, w_gate, w_up, w_down)

    def fwd(x, expert_ids, weights, w_gate, w_up, w_down):
        return fn(x, expert_ids, weights, w_gate, w_up, w_down), (x, expert_ids, weights, w_gate, w_up, w_down)

    def bwd(saved, cotangent):
        x, expert_ids, weights, w_gate, w_up, w_down = saved
        _, pullback = jax.vjp(
            lambda x, weights, wg, wu, wd: reference.ragged_ffn(x, expert_ids, weights, wg, wu, wd),
            x,
            weights,
            w_gate,
            w_up,
            w_down,
        )
        dx, dweights, dwg, dwu, dwd = pullback(cotangent)
        return dx, None, dweights, dwg, dwu, dwd

    fn.defvjp(fwd, bwd)
    return fn
