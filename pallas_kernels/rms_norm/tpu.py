"""RMSNorm for TPUs: blocks of 8 rows (Mosaic; `pltpu.InterpretParams()` on CPU).

Mosaic tiles a block's last two dimensions by (8, 128): a block is 8 whole rows, [8, D], and the
scale [1, D]. The norm is per row (a lane reduction within the row), so a row's result does not
depend on which rows share its block. Fewer than 8 rows are padded to 8 (decode: a tiny copy); a
last partial block of a longer batch is padded by the pipeline, and its extra rows are never stored.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.rms_norm.reference import rms_norm as _rows

BLOCK_ROWS = 8


def _kernel(x_ref, scale_ref, o_ref, *, eps: float):
    o_ref[...] = _rows(x_ref[...], scale_ref[...], eps=eps)


def rms_norm(x, scale, *, eps, interpret=False):
    m, d = x.shape
    if m < BLOCK_ROWS:
        x = jnp.pad(x, ((0, BLOCK_ROWS - m), (0, 0)))
    rows = x.shape[0]
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    out = pl.pallas_call(
        functools.partial(_kernel, eps=eps),
        grid=(pl.cdiv(rows, BLOCK_ROWS),),
        in_specs=[pl.BlockSpec((BLOCK_ROWS, d), lambda i: (i, 0)), pl.BlockSpec((1, d), lambda i: (0, 0))],
        out_specs=pl.BlockSpec((BLOCK_ROWS, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((rows, d), x.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        name="rms_norm",
        **params,
    )(x, scale.reshape(1, d))
    return out[:m]
