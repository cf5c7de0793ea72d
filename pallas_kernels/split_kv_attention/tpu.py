"""Split-KV attention for TPUs: Pallas Mosaic (runs under `pltpu.InterpretParams()` on CPU).

The same two calls as the GPU variant, with the TPU's constraints: the last visible slot of every
query is scalar-prefetched into SMEM, and a block's last two dimensions are multiples of (8, 128) or
whole. So a program takes one query and one split of all KV heads: the cache is read in place, in
its [B, S, Hkv, D] layout, as [split_size, Hkv, D] blocks, and each head's [block_kv, D] rows are a
strided load from it (a transposed head-major copy per call would double the bytes moved; merging
Hkv·D is not free either, since the TPU tiles the last two dimensions). The partial maxima and sums
are [G, 1] columns. A split wholly past a query's last visible slot names the last split it can
see: the pipeline skips a copy whose block index is unchanged, so decode reads only filled splits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.split_kv_attention.kernel import combine_kernel, split_partial
from pallas_kernels.split_kv_attention.reference import last_visible


def _split_kernel(limit_ref, q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, **config):
    i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    for h in range(k_ref.shape[1]):  # the KV heads, each on its own
        q = q_ref[h].astype(jnp.float32)
        m, denom, acc = split_partial(limit_ref[i, j], q, k_ref, v_ref, s, head=h, **config)
        m_ref[h], l_ref[h], acc_ref[h] = m, denom, acc


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size, block_kv, scale, interpret=False):
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g, ns = hq // hkv, s_len // split_size
    qg = q.reshape(b, t, hkv, g, d)
    limit = last_visible(positions, kv_lengths)
    f32 = jnp.float32
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    kernel = functools.partial(_split_kernel, split_size=split_size, block_kv=block_kv, scale=scale)

    def kv_block(i, j, s, lim):
        # never past the split holding the last visible slot (nor before split 0: nothing visible)
        return i, jnp.minimum(s, jax.lax.div(jnp.maximum(lim[i, j], 0), split_size)), 0, 0

    def partial_spec(width):
        return pl.BlockSpec((None, None, None, hkv, g, width), lambda i, j, s, lim: (i, j, s, 0, 0, 0))

    m, denom, acc = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, t, ns),
            in_specs=[
                pl.BlockSpec((None, None, hkv, g, d), lambda i, j, s, lim: (i, j, 0, 0, 0)),
                pl.BlockSpec((None, split_size, hkv, d), kv_block),
                pl.BlockSpec((None, split_size, hkv, d), kv_block),
            ],
            out_specs=[partial_spec(1), partial_spec(1), partial_spec(d)],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((b, t, ns, hkv, g, 1), f32),
            jax.ShapeDtypeStruct((b, t, ns, hkv, g, 1), f32),
            jax.ShapeDtypeStruct((b, t, ns, hkv, g, d), f32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        name="split_kv_attention_splits",
        **params,
    )(limit, qg, k, v)

    def splits_spec(width):
        return pl.BlockSpec((None, None, ns, None, g, width), lambda i, j, h: (i, j, 0, h, 0, 0))

    out = pl.pallas_call(
        combine_kernel,
        grid=(b, t, hkv),
        in_specs=[splits_spec(1), splits_spec(1), splits_spec(d)],
        out_specs=pl.BlockSpec((None, None, None, g, d), lambda i, j, h: (i, j, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, t, hkv, g, d), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        name="split_kv_attention_combine",
        **params,
    )(m, denom, acc)
    return out.reshape(b, t, hq, d)
