"""Batch-invariant matmul for GPUs: Pallas with the Triton lowering (runs under `interpret=True` on CPU).

One program per (bm × bn) output tile; it walks K in blocks of bk, in order, accumulating in float32.
Every program multiplies tiles of the same shapes, so a row's result does not depend on which rows
share its tile or on how many rows there are.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import gpu_params
from pallas_kernels.precision import for_operands


def _kernel(x_ref, w_ref, o_ref, *, bk: int):
    def body(i, acc):
        cols = pl.ds(pl.multiple_of(i * bk, bk), bk)
        return acc + jnp.dot(
            x_ref[:, cols], w_ref[cols, :], preferred_element_type=jnp.float32, precision=for_operands(x_ref.dtype)
        )

    acc = jax.lax.fori_loop(0, x_ref.shape[1] // bk, body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def bi_matmul(x, w, *, bm, bn, bk, out_dtype, interpret=False):
    m, k = x.shape
    n = w.shape[1]
    return pl.pallas_call(
        functools.partial(_kernel, bk=bk),
        grid=(pl.cdiv(m, bm), pl.cdiv(n, bn)),
        in_specs=[pl.BlockSpec((bm, k), lambda i, j: (i, 0)), pl.BlockSpec((k, bn), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        # 8 warps: a 128 × 128 float32 accumulator over 4 warps is 128 registers a thread, and the bf16
        # decode tile then needs 255 and spills (`compile_check --triton-regs`); 8 take 160, no spills.
        # 3 stages of 128 × 128 bf16 tiles are 192 KiB of shared memory; float32 takes 2 (128 KiB), as
        # 3 (256 KiB) pass an H100 block's 227 KiB.
        compiler_params=gpu_params.triton(num_warps=8, num_stages=3 if jnp.dtype(x.dtype).itemsize <= 2 else 2),
        interpret=interpret,
        name="bi_matmul",
    )(x, w)
