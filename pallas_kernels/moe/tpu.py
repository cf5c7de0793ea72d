"""MoE expert FFN kernels for TPUs: Pallas Mosaic (`pltpu.InterpretParams()` on CPU).

The same `expert_matmul` as the GPU variant, pipelined by BlockSpecs: grid (program, column block,
reduction block), the reduction innermost, accumulated in float32 VMEM scratch. Each program's
expert, row and liveness are scalar-prefetched into SMEM and drive the index maps, so only the
selected experts' [block_k, block_k] weight blocks are copied into VMEM. A program that is not live
names the block its predecessor ended on (`api.fetch_order` gives it that expert), and the
pipeline, which skips a copy whose block index is unchanged, moves no weights for it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.moe.kernel import combine_call, epilogue
from pallas_kernels.precision import for_operands


def _interpret(interpret: bool) -> dict:
    return {"interpret": pltpu.InterpretParams()} if interpret else {}


def _kernel(expert_ref, row_ref, live_ref, x_ref, *refs, n_weights, block_rows, repeat_row, silu):
    del expert_ref, row_ref
    w_refs, o_ref, acc_refs = refs[:n_weights], refs[n_weights], refs[n_weights + 1 :]
    live = live_ref[pl.program_id(0)] != 0
    kb = pl.program_id(2)

    @pl.when(kb == 0)
    def _():
        for acc in acc_refs:
            acc[...] = jnp.zeros_like(acc)

    @pl.when(live)
    def _():
        tile = x_ref[...]
        if repeat_row:
            tile = jnp.broadcast_to(tile, (block_rows, tile.shape[1]))
        dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32, precision=for_operands(tile.dtype))
        for acc, w in zip(acc_refs, w_refs, strict=True):
            acc[...] = acc[...] + dot(tile, w[...])

    @pl.when(kb == pl.num_programs(2) - 1)
    def _():
        out = epilogue(tuple(acc[...] for acc in acc_refs), silu)[: o_ref.shape[0]]
        o_ref[...] = jnp.where(live, out, 0.0).astype(o_ref.dtype)


def expert_matmul(x, weights, expert, row, live, *, out_dtype, silu, repeat_row, block_rows, block_k, interpret=False):
    """See `gpu.expert_matmul`: the same arguments and result."""
    n_programs, (_, k_dim, n_dim) = expert.shape[0], weights[0].shape
    n_k, n_n = k_dim // block_k, n_dim // block_k

    def weight_block(p, n, kb, expert, row, live):
        # not live: stay on the block the previous program ended on (its last column and K block)
        here = live[p] != 0
        return expert[p], jnp.where(here, kb, n_k - 1), jnp.where(here, n, n_n - 1)

    if repeat_row:  # one row per block: as [rows, 1, K] so the block's last two dims are whole or 128s
        x_spec = pl.BlockSpec((None, 1, block_k), lambda p, n, kb, expert, row, live: (row[p], 0, kb))
        out_spec = pl.BlockSpec((None, 1, block_k), lambda p, n, kb, expert, row, live: (p, 0, n))
        x, out_shape = x[:, None, :], (n_programs, 1, n_dim)
    else:
        x_spec = pl.BlockSpec((block_rows, block_k), lambda p, n, kb, expert, row, live: (row[p], kb))
        out_spec = pl.BlockSpec((block_rows, block_k), lambda p, n, kb, expert, row, live: (p, n))
        out_shape = (n_programs * block_rows, n_dim)
    kernel = functools.partial(_kernel, n_weights=len(weights), block_rows=block_rows, repeat_row=repeat_row, silu=silu)
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(n_programs, n_n, n_k),
            in_specs=[x_spec, *(pl.BlockSpec((None, block_k, block_k), weight_block) for _ in weights)],
            out_specs=out_spec,
            scratch_shapes=[pltpu.VMEM((block_rows, block_k), jnp.float32) for _ in weights],
        ),
        out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
        name="moe_expert_matmul",
        **_interpret(interpret),
    )(expert, row, live, x, *weights)
    return out.reshape(-1, n_dim)


def combine(y, weights, *, interpret=False):
    params = pltpu.CompilerParams(dimension_semantics=("parallel",))
    return combine_call(y, weights, block_tokens=8, compiler_params=params, **_interpret(interpret))
