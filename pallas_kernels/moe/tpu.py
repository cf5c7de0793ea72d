"""MoE expert FFN kernels for TPUs: Pallas Mosaic (`pltpu.InterpretParams()` on CPU).

Expert ids (gemv) and each tile's expert (gmm) are scalar-prefetched into SMEM and drive the weight
BlockSpecs' index maps, so only the selected experts' weights are copied into VMEM. Programs with
nothing to do (a non-local expert id in gemv, a padding-only tile in gmm) name the block already
resident, so they cost no copy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.moe.kernel import combine_call
from pallas_kernels.moe.reference import ffn


def _interpret(interpret: bool) -> dict:
    return {"interpret": pltpu.InterpretParams()} if interpret else {}


def _gemv_kernel(ids_ref, fetch_ref, x_ref, wg_ref, wu_ref, wd_ref, y_ref, *, n_experts, block_rows, block_k):
    del fetch_ref
    e = ids_ref[pl.program_id(0) * pl.num_programs(1) + pl.program_id(1)]
    here = (e >= 0) & (e < n_experts)

    @pl.when(here)
    def _():
        x_tile = jnp.broadcast_to(x_ref[...], (block_rows, x_ref.shape[-1]))
        y_ref[...] = ffn(x_tile, wg_ref[...], wu_ref[...], wd_ref[...], block_k)[:1]

    @pl.when(jnp.logical_not(here))
    def _():
        y_ref[...] = jnp.zeros_like(y_ref)


def fetch_order(flat_ids: jax.Array, n_experts: int) -> jax.Array:
    """The expert each program's weight blocks name: its own, or for a skipped (non-local) program the
    last one fetched before it (the first local one at the start), so the pipeline, which skips a copy
    whose block index is unchanged, moves no weights for skipped programs."""
    here = (flat_ids >= 0) & (flat_ids < n_experts)
    position = jnp.arange(flat_ids.shape[0])
    last_local = jax.lax.cummax(jnp.where(here, position, -1))
    first_local = jnp.argmax(here)
    return jnp.where(here, flat_ids, flat_ids[jnp.where(last_local >= 0, last_local, first_local)])


def gemv(x, expert_ids, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    t, d = x.shape
    k = expert_ids.shape[1]
    n_experts, _, f = w_gate.shape
    flat = expert_ids.reshape(-1)
    fetch = jnp.clip(fetch_order(flat, n_experts), 0, n_experts - 1)
    weight_block = lambda shape: pl.BlockSpec((None, *shape), lambda i, j, ids, fetch: (fetch[i * k + j], 0, 0))
    y = pl.pallas_call(
        functools.partial(_gemv_kernel, n_experts=n_experts, block_rows=block_rows, block_k=block_k),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(t, k),
            in_specs=[
                pl.BlockSpec((1, d), lambda i, j, ids, fetch: (i, 0)),
                weight_block((d, f)),
                weight_block((d, f)),
                weight_block((f, d)),
            ],
            out_specs=pl.BlockSpec((None, 1, d), lambda i, j, ids, fetch: (i * k + j, 0, 0)),
        ),
        out_shape=jax.ShapeDtypeStruct((t * k, 1, d), jnp.float32),
        name="moe_gemv",
        **_interpret(interpret),
    )(flat, fetch, x, w_gate, w_up, w_down)
    return y.reshape(t, k, d)


def _gmm_kernel(tile_expert_ref, used_ref, x_ref, wg_ref, wu_ref, wd_ref, o_ref, *, block_k):
    @pl.when(pl.program_id(0) < used_ref[0])  # padding-only tiles: skipped, their rows never read
    def _():
        o_ref[...] = ffn(x_ref[...], wg_ref[...], wu_ref[...], wd_ref[...], block_k)


def gmm(rows, tile_expert, used_tiles, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    n, d = rows.shape
    f = w_gate.shape[2]
    return pl.pallas_call(
        functools.partial(_gmm_kernel, block_k=block_k),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(n // block_rows,),
            in_specs=[
                pl.BlockSpec((block_rows, d), lambda i, te, used: (i, 0)),
                pl.BlockSpec((None, d, f), lambda i, te, used: (te[i], 0, 0)),
                pl.BlockSpec((None, d, f), lambda i, te, used: (te[i], 0, 0)),
                pl.BlockSpec((None, f, d), lambda i, te, used: (te[i], 0, 0)),
            ],
            out_specs=pl.BlockSpec((block_rows, d), lambda i, te, used: (i, 0)),
        ),
        out_shape=jax.ShapeDtypeStruct((n, d), jnp.float32),
        name="moe_gmm",
        **_interpret(interpret),
    )(tile_expert, used_tiles, rows, w_gate, w_up, w_down)


def combine(y, weights, *, interpret=False):
    return combine_call(y, weights, **_interpret(interpret))
