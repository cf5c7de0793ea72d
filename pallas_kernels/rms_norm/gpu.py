"""RMSNorm for GPUs: one program per row (Triton lowering; `interpret=True` on CPU).

Triton tensors have power-of-two sizes, so a row of D (5120 in `tml-small-shape`) is read in
chunks of the largest power of two dividing D (at most 4096), through the ref: once for the sum of
squares, once to scale and store. The chunking depends on D alone, never on the number of rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import gpu_params


def chunk_width(d: int) -> int:
    return min(d & -d, 4096)


def _kernel(x_ref, scale_ref, o_ref, *, eps: float, chunk: int):
    d = x_ref.shape[0]
    chunks = [pl.ds(lo, chunk) for lo in range(0, d, chunk)]
    total = jnp.zeros((), jnp.float32)
    for cols in chunks:
        x = x_ref[cols].astype(jnp.float32)
        total = total + jnp.sum(x * x)
    inv = jax.lax.rsqrt(total / d + eps)
    for cols in chunks:
        y = x_ref[cols].astype(jnp.float32) * inv * scale_ref[cols].astype(jnp.float32)
        o_ref[cols] = y.astype(o_ref.dtype)


def rms_norm(x, scale, *, eps, interpret=False):
    m, d = x.shape
    return pl.pallas_call(
        functools.partial(_kernel, eps=eps, chunk=chunk_width(d)),
        grid=(m,),
        in_specs=[pl.BlockSpec((None, d), lambda i: (i, 0)), pl.BlockSpec((d,), lambda i: (0,))],
        out_specs=pl.BlockSpec((None, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((m, d), x.dtype),
        compiler_params=gpu_params.triton(num_warps=4, num_stages=1),
        interpret=interpret,
        name="rms_norm",
    )(x, scale)
