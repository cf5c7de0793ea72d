"""RMSNorm for GPUs: one program per row (Triton lowering; `interpret=True` on CPU)."""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl

from pallas_kernels.rms_norm.reference import rms_norm as _row


def _kernel(x_ref, scale_ref, o_ref, *, eps: float):
    o_ref[...] = _row(x_ref[...], scale_ref[...], eps=eps)


def rms_norm(x, scale, *, eps, interpret=False):
    m, d = x.shape
    return pl.pallas_call(
        functools.partial(_kernel, eps=eps),
        grid=(m,),
        in_specs=[pl.BlockSpec((None, d), lambda i: (i, 0)), pl.BlockSpec((d,), lambda i: (0,))],
        out_specs=pl.BlockSpec((None, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((m, d), x.dtype),
        interpret=interpret,
        name="rms_norm",
    )(x, scale)
