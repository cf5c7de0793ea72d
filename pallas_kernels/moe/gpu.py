"""MoE expert FFN kernels for GPUs: Pallas with the Triton lowering (`interpret=True` on CPU).

One kernel, `expert_matmul`, serves both `moe_gemv` and `moe_gmm`: a program computes one
block_k-wide column block of `tile @ W[e]` for one tile of rows and its expert e, streaming W[e]'s
[block_k, block_k] blocks along the reduction in order (the expert weights stay whole in memory and
are only read where a program loads them, so only the selected experts' weights move). A gemv tile
is one row repeated `block_rows` times (one program per (token, slot)); a gmm tile is `block_rows`
sorted rows of one expert. Programs marked not live (another shard's expert, a padding-only tile)
write zeros without reading weights.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import gpu_params
from pallas_kernels.moe.kernel import combine_call, epilogue
from pallas_kernels.precision import for_operands


def _whole(shape):
    """The whole array as one block: for Triton a pointer to it in HBM (nothing is staged in shared
    memory); a program loads only the [dot_rows, block_k] tiles it names."""
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def dot_rows(block_rows: int) -> int:
    """The rows of a tile as the dot sees it: Triton's `dot` takes at least 16 rows."""
    if block_rows & (block_rows - 1):
        raise ValueError(f"block_rows must be a power of two on GPUs (Triton), got {block_rows}")
    return max(block_rows, 16)


def _kernel(expert_ref, row_ref, live_ref, x_ref, *refs, block_rows, block_k, repeat_row, silu):
    *w_refs, o_ref = refs
    p, n = pl.program_id(0), pl.program_id(1)
    live = live_ref[p] != 0
    rows = o_ref.shape[0]
    k_dim, n_dim = w_refs[0].shape[1:]
    ragged_k, ragged_n = k_dim % block_k != 0, n_dim % block_k != 0  # F = 1440: zero-padded, as the spec

    @pl.when(live)
    def _():
        e = expert_ref[p]
        columns = pl.ds(pl.multiple_of(n * block_k, block_k), block_k)
        # gmm: the tile's block_rows rows, the rest of the dot's rows masked to zero (never read)
        in_tile = jax.lax.broadcasted_iota(jnp.int32, (rows, block_k), 0) < block_rows
        square = functools.partial(jax.lax.broadcasted_iota, jnp.int32, (block_k, block_k))
        in_columns = n * block_k + square(1) < n_dim

        def step(kb, accs):
            lo = pl.ds(pl.multiple_of(kb * block_k, block_k), block_k)

            def in_k(shape):  # the reduction's columns that are inside K
                return kb * block_k + jax.lax.broadcasted_iota(jnp.int32, shape, 1) < k_dim

            if repeat_row:
                if ragged_k:
                    row = pltriton.load(x_ref.at[pl.ds(row_ref[p], 1), lo], mask=in_k((1, block_k)), other=0)
                else:
                    row = x_ref[pl.ds(row_ref[p], 1), lo]
                tile = jnp.broadcast_to(row, (rows, block_k))
            else:
                mask = in_tile & in_k((rows, block_k)) if ragged_k else in_tile
                tile = pltriton.load(x_ref.at[pl.ds(row_ref[p] * block_rows, rows), lo], mask=mask, other=0)
            dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32, precision=for_operands(tile.dtype))

            def weights(w_ref):
                if not (ragged_k or ragged_n):
                    return w_ref[e, lo, columns]
                mask = in_columns if ragged_n else None
                if ragged_k:
                    rows_in = kb * block_k + square(0) < k_dim
                    mask = rows_in if mask is None else mask & rows_in
                return pltriton.load(w_ref.at[e, lo, columns], mask=mask, other=0)

            return tuple(acc + dot(tile, weights(w_ref)) for acc, w_ref in zip(accs, w_refs, strict=True))

        zeros = tuple(jnp.zeros((rows, block_k), jnp.float32) for _ in w_refs)
        accs = jax.lax.fori_loop(0, pl.cdiv(k_dim, block_k), step, zeros)
        o_ref[...] = epilogue(accs, silu).astype(o_ref.dtype)

    @pl.when(jnp.logical_not(live))
    def _():
        o_ref[...] = jnp.zeros_like(o_ref)


def expert_matmul(x, weights, expert, row, live, *, out_dtype, silu, repeat_row, block_rows, block_k, interpret=False):
    """out = tile(p) @ W[expert[p]] for every program p (see `kernel.epilogue` for `silu`).

    x [rows, K]; weights: one or two [E, K, N]; expert, row, live: int32 [P]. With `repeat_row`,
    program p's tile is x[row[p]] repeated and out is [P, N]; otherwise it is x[row[p]·block_rows :
    (row[p]+1)·block_rows] and out is [P·block_rows, N]. Each program writes its whole dot tile
    (Triton cannot slice a value); the rows that are not the tile's are dropped here.
    """
    n_programs, n_dim = expert.shape[0], weights[0].shape[2]
    n_padded = pl.cdiv(n_dim, block_k) * block_k  # a ragged N (F = 1440) is computed padded, then cut
    rows = dot_rows(block_rows)
    kernel = functools.partial(_kernel, block_rows=block_rows, block_k=block_k, repeat_row=repeat_row, silu=silu)
    out = pl.pallas_call(
        kernel,
        grid=(n_programs, n_padded // block_k),
        in_specs=[
            _whole(expert.shape),
            _whole(row.shape),
            _whole(live.shape),
            _whole(x.shape),
            *(_whole(w.shape) for w in weights),
        ],
        out_specs=pl.BlockSpec((None, rows, block_k), lambda p, n: (p, 0, n)),
        out_shape=jax.ShapeDtypeStruct((n_programs, rows, n_padded), out_dtype),
        compiler_params=gpu_params.triton(num_warps=4, num_stages=3),
        interpret=interpret,
        name="moe_expert_matmul",
    )(expert, row, live, x, *weights)
    out = out[..., :n_dim] if n_padded != n_dim else out
    return out[:, 0] if repeat_row else out[:, :block_rows].reshape(-1, n_dim)


def combine(y, weights, *, interpret=False):
    chunk = min(y.shape[2] & -y.shape[2], 4096)  # the largest power of two dividing D (Triton's tensors)
    return combine_call(
        y, weights, block_tokens=1, chunk=chunk, compiler_params=gpu_params.triton(), interpret=interpret
    )
