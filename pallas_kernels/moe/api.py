"""`moe_gemv` and `moe_gmm`: the SwiGLU expert FFN of a mixture of experts, dropless, bit-compatible.

    out = moe_gemv(x, expert_ids, weights, w_gate, w_up, w_down)   # few tokens (decode): gather + GEMV
    out = moe_gmm(x, expert_ids, weights, w_gate, w_up, w_down)    # many tokens: sorted, grouped matmul

x [T, D]; expert_ids int [T, k]; weights [T, k] (routing); w_gate, w_up [E, D, F]; w_down [E, F, D].
Both return float32 [T, D] and compute each (token, slot) with the same operations on tiles of the
same shape (`MoEConfig.block_rows` rows, reductions in `block_k` blocks in order), then combine the k
slots in order in float32: a token's result is bit-identical whichever kernel computed it, and does
not depend on the other tokens or their order. D must be a multiple of block_k; an F that is not
(`tml-small-shape`'s 1440) is treated as zero-padded to one inside the kernels, exactly (the padding
adds nothing), without copying the weights.

Each is two steps, public for expert parallelism: `moe_gemv_slots` / `moe_gmm_slots` give the
unweighted slot outputs [T, k, D], and `moe_combine` weights and sums them. An expert id outside
[0, E) (another shard's expert, as a shard sees them) is skipped and its slot is exactly zero, so
summing the shards' slot outputs and then combining reproduces the one-device result bit for bit."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.moe import gpu, reference, tpu
from pallas_kernels.registry import resolve


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    block_rows: int = 8  # rows per tile in both kernels (gemv fills a tile with one token)
    block_k: int = 128  # weights are read in block_k × block_k tiles: the reduction and column block

    def __post_init__(self):
        if self.block_rows <= 0 or self.block_k <= 0:
            raise ValueError(f"block sizes must be positive, got {self}")


class SortedLayout(NamedTuple):
    row: jax.Array  # [T·k] the padded row of each assignment (a non-local one: 0, never read)
    token_of_row: jax.Array  # [R] the token in each padded row (-1: padding)
    tile_expert: jax.Array  # [R / block_rows] each tile's expert (unused tiles: the last used one's)
    used_tiles: jax.Array  # int32: tiles [0, used_tiles) hold assignments; the rest are skipped


def sorted_layout(expert_ids: jax.Array, n_experts: int, block_rows: int) -> SortedLayout:
    """Assignments sorted by expert (stably), each expert's group padded to whole tiles.

    R is a static bound, ceil(T·k / block_rows) + E tiles of rows. Unused tiles name the last used
    tile's expert, so a TPU pipeline that skips them fetches no further weights.
    """
    flat = expert_ids.reshape(-1)
    a = flat.shape[0]
    here = reference.is_local(flat, n_experts)
    key = jnp.where(here, flat, n_experts)  # non-local assignments sort last and get no rows
    order = reference.stable_argsort(key)
    sizes = jnp.bincount(key, length=n_experts + 1)
    padded = (-(-sizes // block_rows) * block_rows).at[n_experts].set(0)
    group_end = jnp.cumsum(padded)
    group_start = group_end - padded
    sorted_key = key[order]
    rank = jnp.arange(a) - (jnp.cumsum(sizes) - sizes)[sorted_key]
    row_sorted = jnp.where(sorted_key < n_experts, group_start[sorted_key] + rank, 0).astype(jnp.int32)
    row = jnp.zeros(a, jnp.int32).at[order].set(row_sorted)
    n_tiles = -(-a // block_rows) + n_experts
    used = (group_end[n_experts] // block_rows).astype(jnp.int32)
    tile_expert = jnp.searchsorted(group_end[:n_experts], jnp.arange(n_tiles) * block_rows, side="right")
    tile_expert = jnp.where(jnp.arange(n_tiles) < used, tile_expert, tile_expert[jnp.maximum(used - 1, 0)])
    tile_expert = jnp.minimum(tile_expert, n_experts - 1).astype(jnp.int32)
    token = jnp.arange(a, dtype=jnp.int32) // expert_ids.shape[1]
    token_of_row = (
        jnp.full(n_tiles * block_rows, -1, jnp.int32)
        .at[jnp.where(here, row, n_tiles * block_rows)]
        .set(token, mode="drop")
    )
    return SortedLayout(row, token_of_row, tile_expert, used)


def fetch_order(flat_ids: jax.Array, n_experts: int) -> jax.Array:
    """The expert each gemv program names: its own, or for a program with a non-local id the last local
    one before it (the first local one at the start), so a pipeline that skips unchanged block
    indices (TPU) fetches nothing for it. In [0, n_experts) whatever the ids."""
    here = reference.is_local(flat_ids, n_experts)
    last_local = jax.lax.cummax(jnp.where(here, jnp.arange(flat_ids.shape[0]), -1))
    fetch = flat_ids[jnp.where(last_local >= 0, last_local, jnp.argmax(here))]
    return jnp.clip(fetch, 0, n_experts - 1).astype(jnp.int32)


def _ffn(backend, rows, expert, row, live, w_gate, w_up, w_down, *, repeat_row, block_rows, block_k, interpret):
    """The SwiGLU as two `expert_matmul` calls: the hidden h (x's dtype), then h · Wd (float32)."""
    kw = {"repeat_row": repeat_row, "block_rows": block_rows, "block_k": block_k, "interpret": interpret}
    h = backend.expert_matmul(rows, (w_gate, w_up), expert, row, live, out_dtype=rows.dtype, silu=True, **kw)
    if repeat_row:  # gemv: h has one row per program; the down projection's program p reads row p
        row = jnp.arange(expert.shape[0], dtype=jnp.int32)
    return backend.expert_matmul(h, (w_down,), expert, row, live, out_dtype=jnp.float32, silu=False, **kw)


def _gemv_slots(backend, x, expert_ids, w_gate, w_up, w_down, *, block_rows, block_k, interpret):
    t, k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    live = reference.is_local(flat, w_gate.shape[0]).astype(jnp.int32)
    token = jnp.arange(t * k, dtype=jnp.int32) // k
    y = _ffn(
        backend,
        x,
        fetch_order(flat, w_gate.shape[0]),
        token,
        live,
        w_gate,
        w_up,
        w_down,
        repeat_row=True,
        block_rows=block_rows,
        block_k=block_k,
        interpret=interpret,
    )
    return y.reshape(t, k, -1)  # programs that were not live wrote zeros


def _gmm_slots(backend, x, expert_ids, w_gate, w_up, w_down, *, block_rows, block_k, interpret):
    t, k = expert_ids.shape
    layout = sorted_layout(expert_ids, w_gate.shape[0], block_rows)
    tok = layout.token_of_row
    rows = jnp.where(tok[:, None] >= 0, x[jnp.maximum(tok, 0)], jnp.zeros((), x.dtype))
    n_tiles = layout.tile_expert.shape[0]
    tiles = jnp.arange(n_tiles, dtype=jnp.int32)
    y = _ffn(
        backend,
        rows,
        layout.tile_expert,
        tiles,
        (tiles < layout.used_tiles).astype(jnp.int32),
        w_gate,
        w_up,
        w_down,
        repeat_row=False,
        block_rows=block_rows,
        block_k=block_k,
        interpret=interpret,
    )
    here = reference.is_local(expert_ids.reshape(-1), w_gate.shape[0])
    return jnp.where(here[:, None], y[layout.row], 0.0).reshape(t, k, -1)


def _variants(slots):
    return {
        "reference": reference.expert_slots,
        "gpu": lambda *a, **kw: slots(gpu, *a, **kw),
        "tpu": lambda *a, **kw: slots(tpu, *a, **kw),
    }


GEMV_VARIANTS, GMM_VARIANTS = _variants(_gemv_slots), _variants(_gmm_slots)
COMBINE_VARIANTS = {
    "reference": reference.combine,
    "gpu": gpu.combine,
    "tpu": tpu.combine,
}


def _check(op, x, expert_ids, w_gate, w_up, w_down, config):
    d, f = w_gate.shape[1], w_gate.shape[2]
    if x.ndim != 2 or x.shape[1] != d or w_up.shape != w_gate.shape or w_down.shape != (w_gate.shape[0], f, d):
        raise ValueError(
            f"{op}: x [T, D], w_gate/w_up [E, D, F], w_down [E, F, D]; got {x.shape}, {w_gate.shape}, {w_down.shape}"
        )
    if expert_ids.ndim != 2 or expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: expert_ids must be [T, k] for x [T, D]; got {expert_ids.shape} for {x.shape}")
    if d % config.block_k:
        raise ValueError(f"{op}: D ({d}) must be a multiple of block_k ({config.block_k})")


def _slots_op(op, variants, config, implementation):
    """The differentiable slot outputs [T, k, D] of kernel `op`: forward by the kernel, backward by
    `reference.ragged_slots` (input gradient through the transposed weights, weight gradients through
    transposed grouped matmuls)."""
    kw = {"block_rows": config.block_rows, "block_k": config.block_k}

    @jax.custom_vjp
    def slots(x, expert_ids, w_gate, w_up, w_down):
        _check(op, x, expert_ids, w_gate, w_up, w_down, config)
        return resolve(op, implementation, variants)(x, expert_ids, w_gate, w_up, w_down, **kw)

    def fwd(x, expert_ids, w_gate, w_up, w_down):
        return slots(x, expert_ids, w_gate, w_up, w_down), (x, expert_ids, w_gate, w_up, w_down)

    def bwd(saved, cotangent):
        x, expert_ids, *w = saved
        _, pullback = jax.vjp(lambda x, *w: reference.ragged_slots(x, expert_ids, *w), x, *w)
        dx, dwg, dwu, dwd = pullback(cotangent)
        return dx, None, dwg, dwu, dwd

    slots.defvjp(fwd, bwd)
    return lambda x, expert_ids, *w: slots(jnp.asarray(x), jnp.asarray(expert_ids, jnp.int32), *map(jnp.asarray, w))


def moe_combine(y, weights, *, implementation=None) -> jax.Array:
    """Σ_j weights[t, j] · y[t, j] in float32, slot 0 first: y [T, k, D], weights [T, k] → [T, D]. One
    program per token; differentiable (the backward pass is `reference.combine`'s)."""
    y, weights = jnp.asarray(y), jnp.asarray(weights)
    if y.ndim != 3 or weights.shape != y.shape[:2]:
        raise ValueError(f"moe_combine: y [T, k, D] and weights [T, k]; got {y.shape}, {weights.shape}")

    @jax.custom_vjp
    def fn(y, weights):
        return resolve("moe_combine", implementation, COMBINE_VARIANTS)(y, weights)

    def fwd(y, weights):
        return fn(y, weights), (y, weights)

    def bwd(saved, cotangent):
        return jax.vjp(reference.combine, *saved)[1](cotangent)

    fn.defvjp(fwd, bwd)
    return fn(y.astype(jnp.float32), weights)


def moe_gemv_slots(x, expert_ids, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """`moe_gemv` before the combine: float32 [T, k, D], zero for ids outside [0, E)."""
    return _slots_op("moe_gemv", GEMV_VARIANTS, config, implementation)(x, expert_ids, w_gate, w_up, w_down)


def moe_gmm_slots(x, expert_ids, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """`moe_gmm` before the combine: float32 [T, k, D], zero for ids outside [0, E)."""
    return _slots_op("moe_gmm", GMM_VARIANTS, config, implementation)(x, expert_ids, w_gate, w_up, w_down)


def _check_routing(op, expert_ids, weights):
    if jnp.shape(weights) != jnp.shape(expert_ids):
        raise ValueError(
            f"{op}: expert_ids and weights must both be [T, k]; got {jnp.shape(expert_ids)}, {jnp.shape(weights)}"
        )


def moe_gemv(x, expert_ids, weights, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """For decoding: one program per (token, slot) reads only its expert's weights, then the in-order
    combine. Differentiable (the backward pass is `reference.ragged_slots`')."""
    _check_routing("moe_gemv", expert_ids, weights)
    y = moe_gemv_slots(x, expert_ids, w_gate, w_up, w_down, config=config, implementation=implementation)
    return moe_combine(y, weights, implementation=implementation)


def moe_gmm(x, expert_ids, weights, w_gate, w_up, w_down, *, config=MoEConfig(), implementation=None) -> jax.Array:
    """For training and prefill: assignments sorted by expert into whole tiles, one program per tile,
    then the in-order combine. Differentiable (the backward pass is `reference.ragged_slots`')."""
    _check_routing("moe_gmm", expert_ids, weights)
    y = moe_gmm_slots(x, expert_ids, w_gate, w_up, w_down, config=config, implementation=implementation)
    return moe_combine(y, weights, implementation=implementation)
