"""MoE expert FFN kernels for GPUs: Pallas with the Triton lowering (`interpret=True` on CPU).

The expert weights stay whole in memory; a program indexes its expert (`w_ref[e]`), so only the
selected experts' weights are read. `gemv`: one program per (token, slot), writing zeros for an
expert id outside [0, E). `gmm`: one program per tile of `block_rows` sorted rows, all of one expert;
tiles past the used ones return at once. `combine`: one program per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.moe.kernel import combine_call
from pallas_kernels.moe.reference import ffn


def _whole(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _gemv_kernel(ids_ref, x_ref, wg_ref, wu_ref, wd_ref, y_ref, *, block_rows, block_k):
    e = ids_ref[pl.program_id(0), pl.program_id(1)]
    here = (e >= 0) & (e < wg_ref.shape[0])

    @pl.when(here)
    def _():
        x_tile = jnp.broadcast_to(x_ref[...], (block_rows, x_ref.shape[-1]))  # the token in every row
        y_ref[...] = ffn(x_tile, wg_ref[e], wu_ref[e], wd_ref[e], block_k)[0]

    @pl.when(jnp.logical_not(here))
    def _():
        y_ref[...] = jnp.zeros_like(y_ref)


def gemv(x, expert_ids, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    t, d = x.shape
    k = expert_ids.shape[1]
    return pl.pallas_call(
        functools.partial(_gemv_kernel, block_rows=block_rows, block_k=block_k),
        grid=(t, k),
        in_specs=[
            _whole(expert_ids.shape),
            pl.BlockSpec((1, d), lambda i, j: (i, 0)),
            _whole(w_gate.shape),
            _whole(w_up.shape),
            _whole(w_down.shape),
        ],
        out_specs=pl.BlockSpec((None, None, d), lambda i, j: (i, j, 0)),
        out_shape=jax.ShapeDtypeStruct((t, k, d), jnp.float32),
        interpret=interpret,
        name="moe_gemv",
    )(expert_ids, x, w_gate, w_up, w_down)


def _gmm_kernel(tile_expert_ref, used_ref, x_ref, wg_ref, wu_ref, wd_ref, o_ref, *, block_k):
    i = pl.program_id(0)

    @pl.when(i < used_ref[0])  # tiles past the last group hold only padding: their rows are never read
    def _():
        e = tile_expert_ref[i]
        o_ref[...] = ffn(x_ref[...], wg_ref[e], wu_ref[e], wd_ref[e], block_k)


def gmm(rows, tile_expert, used_tiles, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    n, d = rows.shape
    return pl.pallas_call(
        functools.partial(_gmm_kernel, block_k=block_k),
        grid=(n // block_rows,),
        in_specs=[
            _whole(tile_expert.shape),
            _whole(used_tiles.shape),
            pl.BlockSpec((block_rows, d), lambda i: (i, 0)),
            _whole(w_gate.shape),
            _whole(w_up.shape),
            _whole(w_down.shape),
        ],
        out_specs=pl.BlockSpec((block_rows, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n, d), jnp.float32),
        interpret=interpret,
        name="moe_gmm",
    )(tile_expert, used_tiles, rows, w_gate, w_up, w_down)


def combine(y, weights, *, interpret=False):
    return combine_call(y, weights, interpret=interpret)
