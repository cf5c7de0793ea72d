"""Split-KV attention for TPUs: Pallas Mosaic (runs under `pltpu.InterpretParams()` on CPU).

The same two calls as the GPU variant, with the TPU's constraints: the last visible slot of every
query is scalar-prefetched into SMEM, and blocks keep their last two dimensions whole, so the cache is
read head-major ([B, Hkv, S, D]: a transposed copy of the model's [B, S, Hkv, D] cache per call — a
head-major cache layout would remove it) and the partial maxima and sums carry a trailing unit axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.split_kv_attention.kernel import split_partial
from pallas_kernels.split_kv_attention.reference import combine, last_visible


def _split_kernel(limit_ref, q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, **config):
    i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(3)
    m, denom, acc = split_partial(limit_ref[i, j], q_ref[...].astype(jnp.float32), k_ref, v_ref, s, **config)
    m_ref[...], l_ref[...], acc_ref[...] = m[:, None], denom[:, None], acc


def _combine_kernel(m_ref, l_ref, acc_ref, o_ref):
    o_ref[...] = combine(m_ref[..., 0], l_ref[..., 0], acc_ref[...]).astype(o_ref.dtype)


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size, block_kv, scale, interpret=False):
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g, ns = hq // hkv, s_len // split_size
    qg = q.reshape(b, t, hkv, g, d)
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    limit = last_visible(positions, kv_lengths)
    f32 = jnp.float32
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    kernel = functools.partial(_split_kernel, split_size=split_size, block_kv=block_kv, scale=scale)
    m, denom, acc = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, t, hkv, ns),
            in_specs=[
                pl.BlockSpec((None, None, None, g, d), lambda i, j, h, s, lim: (i, j, h, 0, 0)),
                pl.BlockSpec((None, None, split_size, d), lambda i, j, h, s, lim: (i, h, s, 0)),
                pl.BlockSpec((None, None, split_size, d), lambda i, j, h, s, lim: (i, h, s, 0)),
            ],
            out_specs=[
                pl.BlockSpec((None, None, None, None, g, 1), lambda i, j, h, s, lim: (i, j, h, s, 0, 0)),
                pl.BlockSpec((None, None, None, None, g, 1), lambda i, j, h, s, lim: (i, j, h, s, 0, 0)),
                pl.BlockSpec((None, None, None, None, g, d), lambda i, j, h, s, lim: (i, j, h, s, 0, 0)),
            ],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((b, t, hkv, ns, g, 1), f32),
            jax.ShapeDtypeStruct((b, t, hkv, ns, g, 1), f32),
            jax.ShapeDtypeStruct((b, t, hkv, ns, g, d), f32),
        ],
        name="split_kv_attention_splits",
        **params,
    )(limit, qg, kh, vh)
    out = pl.pallas_call(
        _combine_kernel,
        grid=(b, t, hkv),
        in_specs=[
            pl.BlockSpec((None, None, None, ns, g, 1), lambda i, j, h: (i, j, h, 0, 0, 0)),
            pl.BlockSpec((None, None, None, ns, g, 1), lambda i, j, h: (i, j, h, 0, 0, 0)),
            pl.BlockSpec((None, None, None, ns, g, d), lambda i, j, h: (i, j, h, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, None, g, d), lambda i, j, h: (i, j, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, t, hkv, g, d), q.dtype),
        name="split_kv_attention_combine",
        **params,
    )(m, denom, acc)
    return out.reshape(b, t, hq, d)
