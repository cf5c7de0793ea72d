"""Split-KV attention for GPUs: Pallas with the Triton lowering (runs under `interpret=True` on CPU).

Two calls: one program per (row, query, KV head, split) writes that split's partials, then one per
(row, query, KV head) combines them. The cache stays in its [B, S, Hkv, D] layout; a program loads
only the blocks of its split that the query can see. Triton's `dot` takes at least 16 rows and
power-of-two shapes, so a query's G heads are padded with zero queries to G' = max(16, 2^⌈log2 G⌉)
(their rows are computed and dropped; rows of a dot never mix).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import gpu_params
from pallas_kernels.split_kv_attention.kernel import combine_kernel, split_partial
from pallas_kernels.split_kv_attention.reference import last_visible


def padded_group(g: int) -> int:
    return max(16, 1 << (g - 1).bit_length())


def _split_kernel(limit_ref, q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, **config):
    m, denom, acc = split_partial(
        limit_ref[...], q_ref[...].astype(jnp.float32), k_ref, v_ref, pl.program_id(3), **config
    )
    m_ref[...], l_ref[...], acc_ref[...] = m, denom, acc


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size, block_kv, scale, interpret=False):
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g, ns = hq // hkv, s_len // split_size
    gp = padded_group(g)
    qg = jnp.pad(q.reshape(b, t, hkv, g, d), ((0, 0), (0, 0), (0, 0), (0, gp - g), (0, 0)))
    limit = last_visible(positions, kv_lengths)
    kernel = functools.partial(_split_kernel, split_size=split_size, block_kv=block_kv, scale=scale)
    f32 = jnp.float32
    column = jax.ShapeDtypeStruct((b, t, hkv, ns, gp, 1), f32)
    m, denom, acc = pl.pallas_call(
        kernel,
        grid=(b, t, hkv, ns),
        in_specs=[
            pl.BlockSpec((None, None), lambda i, j, h, s: (i, j)),
            pl.BlockSpec((None, None, None, gp, d), lambda i, j, h, s: (i, j, h, 0, 0)),
            pl.BlockSpec((None, split_size, None, d), lambda i, j, h, s: (i, s, h, 0)),
            pl.BlockSpec((None, split_size, None, d), lambda i, j, h, s: (i, s, h, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, None, gp, 1), lambda i, j, h, s: (i, j, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, None, gp, 1), lambda i, j, h, s: (i, j, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, None, gp, d), lambda i, j, h, s: (i, j, h, s, 0, 0)),
        ],
        out_shape=[column, column, jax.ShapeDtypeStruct((b, t, hkv, ns, gp, d), f32)],
        compiler_params=gpu_params.triton(num_warps=4, num_stages=2),
        interpret=interpret,
        name="split_kv_attention_splits",
    )(limit, qg, k, v)
    out = pl.pallas_call(
        combine_kernel,
        grid=(b, t, hkv),
        in_specs=[
            pl.BlockSpec((None, None, None, ns, gp, 1), lambda i, j, h: (i, j, h, 0, 0, 0)),
            pl.BlockSpec((None, None, None, ns, gp, 1), lambda i, j, h: (i, j, h, 0, 0, 0)),
            pl.BlockSpec((None, None, None, ns, gp, d), lambda i, j, h: (i, j, h, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, None, gp, d), lambda i, j, h: (i, j, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, t, hkv, gp, d), q.dtype),
        compiler_params=gpu_params.triton(num_warps=4, num_stages=1),
        interpret=interpret,
        name="split_kv_attention_combine",
    )(m, denom, acc)
    return out[:, :, :, :g].reshape(b, t, hq, d)
