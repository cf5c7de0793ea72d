"""Batch-invariant matmul for TPUs: Pallas Mosaic (runs under `pltpu.InterpretParams()` on CPU).

Grid (M / bm, N / bn, K / bk) with K innermost and sequential: a float32 VMEM accumulator per output
tile, added to block by block in K order, written once at the last K block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.precision import for_operands


def _kernel(x_ref, w_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    acc_ref[...] += jnp.dot(
        x_ref[...], w_ref[...], preferred_element_type=jnp.float32, precision=for_operands(x_ref.dtype)
    )

    @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def bi_matmul(x, w, *, bm, bn, bk, out_dtype, interpret=False):
    m, k = x.shape
    n = w.shape[1]
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    return pl.pallas_call(
        _kernel,
        grid=(pl.cdiv(m, bm), pl.cdiv(n, bn), k // bk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)), pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        name="bi_matmul",
        **params,
    )(x, w)
