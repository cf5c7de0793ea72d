"""MoE expert FFN kernels for TPUs: Pallas Mosaic (`pltpu.InterpretParams()` on CPU).

The same `expert_matmul` as the GPU variant, pipelined by BlockSpecs: grid (program, column tile,
reduction tile), the reduction innermost, accumulated in float32 VMEM scratch. Each program's
expert, row and liveness are scalar-prefetched into SMEM and drive the index maps, so only the
selected experts' weight tiles are copied into VMEM. A program that is not live names the tile its
predecessor ended on (`api.fetch_order` gives it that expert), and the pipeline, which skips a copy
whose block index is unchanged, moves no weights for it.

The weight tiles [tk, tn] are chosen from the weights' shape (`expert_tiles`: the fewest grid steps
within the VMEM budget, whole rows of N where they fit — at D 4096, F 1024 in bf16 the gate and up
projections take [512, 1024] tiles, whole rows of F, the down projection [256, 4096]), never from
the number of tokens, so gemv and gmm take the same tiles. Inside a tile the kernel computes the
spec's [block_rows, block_k] × [block_k, block_k] products, each column block adding its reduction
blocks in order: the same dots on the same shapes whatever tiles are taken.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_tiling
from pallas_kernels.moe.kernel import combine_call, epilogue
from pallas_kernels.precision import for_operands


def _interpret(interpret: bool) -> dict:
    return {"interpret": pltpu.InterpretParams()} if interpret else {}


def _kernel(expert_ref, row_ref, live_ref, x_ref, *refs, n_weights, block_rows, block_k, repeat_row, silu, k_dim):
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
        dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32, precision=for_operands(x_ref.dtype))
        tk = x_ref.shape[-1]
        ragged = k_dim % tk != 0  # the last K tile runs past K: what it reads there is not data
        for acc, w in zip(acc_refs, w_refs, strict=True):
            for c in range(0, w.shape[1], block_k):  # the spec's block_k-wide column blocks
                s = acc[:, c : c + block_k]
                for lo in range(0, tk, block_k):  # each adding its block_k blocks in order
                    tile, w_block = x_ref[:, lo : lo + block_k], w[lo : lo + block_k, c : c + block_k]
                    if ragged:  # zero-pad the reduction past K, as the spec does; skip blocks wholly past it
                        left = k_dim - kb * tk - lo
                        tile = jnp.where(jax.lax.broadcasted_iota(jnp.int32, tile.shape, 1) < left, tile, 0)
                        w_block = jnp.where(jax.lax.broadcasted_iota(jnp.int32, w_block.shape, 0) < left, w_block, 0)
                    if repeat_row:
                        tile = jnp.broadcast_to(tile, (block_rows, block_k))
                    total = s + dot(tile, w_block)
                    s = jnp.where(left > 0, total, s) if ragged else total
                acc[:, c : c + block_k] = s

    @pl.when(kb == pl.num_programs(2) - 1)
    def _():
        out = epilogue(tuple(acc[...] for acc in acc_refs), silu)[: o_ref.shape[0]]
        o_ref[...] = jnp.where(live, out, 0.0).astype(o_ref.dtype)


def expert_tiles(k: int, n: int, *, n_weights: int, block_rows: int, block_k: int, x_dtype, w_dtype, out_dtype):
    """(tn, tk) for tiles of `block_rows` rows times `n_weights` [E, K, N] weights: from K, N and the
    config, never from the tokens (gemv and gmm get the same)."""

    def vmem(tn, tk):
        blocks = [((block_rows, tk), x_dtype), ((block_rows, tn), out_dtype)]
        blocks += [((tk, tn), w_dtype)] * n_weights
        scratch = n_weights * tpu_tiling.vmem_bytes((block_rows, tn), jnp.float32)
        return 2 * sum(tpu_tiling.vmem_bytes(*b) for b in blocks) + scratch

    unit = tpu_tiling.unit(block_k)
    return tpu_tiling.tiles(k, n, k_unit=unit, n_unit=unit, vmem=vmem, pad_k=k % block_k != 0)


def expert_matmul(
    x, weights, expert, row, live, *, out_dtype, silu, repeat_row, block_rows, block_k, interpret=False, tiles=None
):
    """See `gpu.expert_matmul`: the same arguments and result. `tiles` = (tn, tk) overrides the
    weights' shape's choice (`expert_tiles`)."""
    n_programs, (_, k_dim, n_dim) = expert.shape[0], weights[0].shape
    tn, tk = tiles or expert_tiles(
        k_dim,
        n_dim,
        n_weights=len(weights),
        block_rows=block_rows,
        block_k=block_k,
        x_dtype=x.dtype,
        w_dtype=weights[0].dtype,
        out_dtype=out_dtype,
    )
    if tk % block_k or tn % block_k:
        raise ValueError(f"tiles ({tn}, {tk}) must be multiples of block_k ({block_k})")
    # a ragged N (F = 1440) ends in a partial column tile (its extra columns are dropped on writing), a
    # ragged K in a partial reduction tile, masked in the kernel
    n_k, n_n = pl.cdiv(k_dim, tk), pl.cdiv(n_dim, tn)

    def weight_block(p, n, kb, expert, row, live):
        # not live: stay on the block the previous program ended on (its last column and K block)
        here = live[p] != 0
        return expert[p], jnp.where(here, kb, n_k - 1), jnp.where(here, n, n_n - 1)

    if repeat_row:  # one row per block: as [rows, 1, K] so the block's last two dims are whole or 128s
        x_spec = pl.BlockSpec((None, 1, tk), lambda p, n, kb, expert, row, live: (row[p], 0, kb))
        out_spec = pl.BlockSpec((None, 1, tn), lambda p, n, kb, expert, row, live: (p, 0, n))
        x, out_shape = x[:, None, :], (n_programs, 1, n_dim)
    else:
        x_spec = pl.BlockSpec((block_rows, tk), lambda p, n, kb, expert, row, live: (row[p], kb))
        out_spec = pl.BlockSpec((block_rows, tn), lambda p, n, kb, expert, row, live: (p, n))
        out_shape = (n_programs * block_rows, n_dim)
    kernel = functools.partial(
        _kernel,
        n_weights=len(weights),
        block_rows=block_rows,
        block_k=block_k,
        repeat_row=repeat_row,
        silu=silu,
        k_dim=k_dim,
    )
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(n_programs, n_n, n_k),
            in_specs=[x_spec, *(pl.BlockSpec((None, tk, tn), weight_block) for _ in weights)],
            out_specs=out_spec,
            scratch_shapes=[pltpu.VMEM((block_rows, tn), jnp.float32) for _ in weights],
        ),
        out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
        # programs and column tiles are independent (a v5p's two cores split them); the reduction is not
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        name="moe_expert_matmul",
        **_interpret(interpret),
    )(expert, row, live, x, *weights)
    return out.reshape(-1, n_dim)


def combine(y, weights, *, interpret=False):
    params = pltpu.CompilerParams(dimension_semantics=("parallel",))
    return combine_call(y, weights, block_tokens=8, compiler_params=params, **_interpret(interpret))
