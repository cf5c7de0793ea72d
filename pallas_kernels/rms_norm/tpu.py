"""RMSNorm for TPUs: one program per row (Mosaic; `pltpu.InterpretParams()` on CPU).

Rows are [1, D] blocks with the scale as [1, D], so every block keeps whole last two dimensions.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.rms_norm.reference import rms_norm as _row


def _kernel(x_ref, scale_ref, o_ref, *, eps: float):
    o_ref[...] = _row(x_ref[...], scale_ref[...], eps=eps)


def rms_norm(x, scale, *, eps, interpret=False):
    m, d = x.shape
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    return pl.pallas_call(
        functools.partial(_kernel, eps=eps),
        grid=(m,),
        in_specs=[pl.BlockSpec((1, d), lambda i: (i, 0)), pl.BlockSpec((1, d), lambda i: (0, 0))],
        out_specs=pl.BlockSpec((1, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((m, d), x.dtype),
        name="rms_norm",
        **params,
    )(x, scale.reshape(1, d))
