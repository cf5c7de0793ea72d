"""Batch-invariant matmul for TPUs: Pallas Mosaic (runs under `pltpu.InterpretParams()` on CPU).

Grid (M / bm, N / tn, K / tk) with K innermost and sequential: a float32 VMEM accumulator per output
tile, added to block by block in K order, written once at the last K block. bm is the config's; the
weight tiles (tn, tk) are chosen from K and N (`tpu_tiling.tiles`: the fewest grid steps within the
VMEM budget), never from M, so a row's result does not depend on how many rows there are. Inside a
[bm, tk] × [tk, tn] step the kernel still computes the config's [bm, bk] × [bk, bn] products, each
bn-wide column block adding its bk blocks in K order: the same dots on the same shapes whatever
tiles are taken (a dot's columns can depend on its width: XLA's CPU dot changes them at N ≥ 512).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_tiling
from pallas_kernels.precision import for_operands


def _kernel(x_ref, w_ref, o_ref, acc_ref, *, bn, bk):
    @pl.when(pl.program_id(2) == 0)
    def _():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    for c in range(0, w_ref.shape[1], bn):  # the config's bn-wide column blocks
        acc = acc_ref[:, c : c + bn]
        for lo in range(0, x_ref.shape[1], bk):  # and its bk blocks of K, in order
            acc = acc + jnp.dot(
                x_ref[:, lo : lo + bk],
                w_ref[lo : lo + bk, c : c + bn],
                preferred_element_type=jnp.float32,
                precision=for_operands(x_ref.dtype),
            )
        acc_ref[:, c : c + bn] = acc

    @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def weight_tiles(k: int, n: int, *, bm: int, bn: int, bk: int, x_dtype, w_dtype, out_dtype) -> tuple[int, int]:
    """(tn, tk) for an [M, K] @ [K, N] matmul with row tiles of bm: from K and N (and the config), not M.

    At least two column blocks where N allows it, so a v5p's two cores share a decode matmul (M ≤ bm
    gives the row axis one step)."""

    def vmem(tn, tk):
        blocks = [((bm, tk), x_dtype), ((tk, tn), w_dtype), ((bm, tn), out_dtype)]
        return 2 * sum(tpu_tiling.vmem_bytes(*b) for b in blocks) + tpu_tiling.vmem_bytes((bm, tn), jnp.float32)

    unit = tpu_tiling.unit
    return tpu_tiling.tiles(k, n, k_unit=unit(bk), n_unit=unit(bn), vmem=vmem, min_column_steps=2)


def bi_matmul(x, w, *, bm, bn, bk, out_dtype, interpret=False, tiles=None):
    """x [M, K] @ w [K, N], K a multiple of bk. `tiles` = (tn, tk) overrides the shape's choice."""
    m, k = x.shape
    n = w.shape[1]
    tn, tk = tiles or weight_tiles(k, n, bm=bm, bn=bn, bk=bk, x_dtype=x.dtype, w_dtype=w.dtype, out_dtype=out_dtype)
    if tk % bk or k % tk or tn % bn:
        raise ValueError(f"tiles ({tn}, {tk}): tn must be a multiple of bn ({bn}), tk of bk ({bk}) dividing K ({k})")
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    return pl.pallas_call(
        functools.partial(_kernel, bn=bn, bk=bk),
        grid=(pl.cdiv(m, bm), pl.cdiv(n, tn), k // tk),
        in_specs=[pl.BlockSpec((bm, tk), lambda i, j, kk: (i, kk)), pl.BlockSpec((tk, tn), lambda i, j, kk: (kk, j))],
        out_specs=pl.BlockSpec((bm, tn), lambda i, j, kk: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        scratch_shapes=[pltpu.VMEM((bm, tn), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        name="bi_matmul",
        **params,
    )(x, w)
