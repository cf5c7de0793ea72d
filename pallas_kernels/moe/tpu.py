"""MoE expert FFN kernels for TPUs: Pallas Mosaic (`pltpu.InterpretParams()` on CPU).

Expert ids (gemv) and each tile's expert (gmm) are scalar-prefetched into SMEM and drive the weight
BlockSpecs' index maps, so only the selected experts' weights are copied into VMEM.
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


def _gemv_kernel(ids_ref, x_ref, wg_ref, wu_ref, wd_ref, y_ref, *, block_rows, block_k):
    x_tile = jnp.broadcast_to(x_ref[...], (block_rows, x_ref.shape[-1]))
    y_ref[...] = ffn(x_tile, wg_ref[...], wu_ref[...], wd_ref[...], block_k)[:1]


def gemv(x, expert_ids, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    t, d = x.shape
    k = expert_ids.shape[1]
    f = w_gate.shape[2]
    y = pl.pallas_call(
        functools.partial(_gemv_kernel, block_rows=block_rows, block_k=block_k),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(t, k),
            in_specs=[
                pl.BlockSpec((1, d), lambda i, j, ids: (i, 0)),
                pl.BlockSpec((None, d, f), lambda i, j, ids: (ids[i, j], 0, 0)),
                pl.BlockSpec((None, d, f), lambda i, j, ids: (ids[i, j], 0, 0)),
                pl.BlockSpec((None, f, d), lambda i, j, ids: (ids[i, j], 0, 0)),
            ],
            out_specs=pl.BlockSpec((None, 1, d), lambda i, j, ids: (i * k + j, 0, 0)),
        ),
        out_shape=jax.ShapeDtypeStruct((t * k, 1, d), jnp.float32),
        name="moe_gemv",
        **_interpret(interpret),
    )(expert_ids, x, w_gate, w_up, w_down)
    return y.reshape(t, k, d)


def _gmm_kernel(tile_expert_ref, x_ref, wg_ref, wu_ref, wd_ref, o_ref, *, block_k):
    o_ref[...] = ffn(x_ref[...], wg_ref[...], wu_ref[...], wd_ref[...], block_k)


def gmm(rows, tile_expert, w_gate, w_up, w_down, *, block_rows, block_k, interpret=False):
    n, d = rows.shape
    f = w_gate.shape[2]
    return pl.pallas_call(
        functools.partial(_gmm_kernel, block_k=block_k),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(n // block_rows,),
            in_specs=[
                pl.BlockSpec((block_rows, d), lambda i, te: (i, 0)),
                pl.BlockSpec((None, d, f), lambda i, te: (te[i], 0, 0)),
                pl.BlockSpec((None, d, f), lambda i, te: (te[i], 0, 0)),
                pl.BlockSpec((None, f, d), lambda i, te: (te[i], 0, 0)),
            ],
            out_specs=pl.BlockSpec((block_rows, d), lambda i, te: (i, 0)),
        ),
        out_shape=jax.ShapeDtypeStruct((n, d), jnp.float32),
        name="moe_gmm",
        **_interpret(interpret),
    )(tile_expert, rows, w_gate, w_up, w_down)


def combine(y, weights, *, interpret=False):
    return combine_call(y, weights, **_interpret(interpret))
