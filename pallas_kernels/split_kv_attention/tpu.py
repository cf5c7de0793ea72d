"""Split-KV attention for TPUs: Pallas Mosaic (runs under `pltpu.InterpretParams()` on CPU).

The same two calls as the GPU variant, with the TPU's constraints: each query tile's last visible
slot is scalar-prefetched into SMEM, and a block's last two dimensions are multiples of (8, 128) or
whole. So a program takes one query tile (QUERY_TILE × G rows: a multiple of 8) and one split of all
KV heads: the cache is read in place, in its [B, S, Hkv, D] layout, as [split_size, Hkv, D] blocks,
and each head's [block_kv, D] rows are a strided load from it (a transposed head-major copy per call
would double the bytes moved; merging Hkv·D is not free either, since the TPU tiles the last two
dimensions). The partial maxima and sums are [R, 1] columns. A split wholly past a tile's last
visible slot names the last split it can see: the pipeline skips a copy whose block index is
unchanged, so decode reads only filled splits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.split_kv_attention.kernel import QUERY_TILE, combine_kernel, query_tiles, split_partial, untile
from pallas_kernels.split_kv_attention.reference import last_visible


def _split_kernel(tile_limit_ref, row_limit_ref, q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, **config):
    i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    row_limit = row_limit_ref[...]
    for h in range(k_ref.shape[1]):  # the KV heads, each on its own
        q = q_ref[h].astype(jnp.float32)
        m, denom, acc = split_partial(row_limit, tile_limit_ref[i, j], q, k_ref, v_ref, s, head=h, **config)
        m_ref[h], l_ref[h], acc_ref[h] = m, denom, acc


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size, block_kv, scale, interpret=False):
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g, ns = hq // hkv, s_len // split_size
    rows = QUERY_TILE * g
    q_tiles, row_limit, tile_limit = query_tiles(
        q.reshape(b, t, hkv, g, d), last_visible(positions, kv_lengths), QUERY_TILE, g
    )
    n_tiles = tile_limit.shape[1]
    f32 = jnp.float32
    params = {"interpret": pltpu.InterpretParams()} if interpret else {}
    kernel = functools.partial(_split_kernel, split_size=split_size, block_kv=block_kv, scale=scale)

    def kv_block(i, j, s, lim):
        # never past the split holding the tile's last visible slot (nor before split 0: nothing visible)
        return i, jnp.minimum(s, jax.lax.div(jnp.maximum(lim[i, j], 0), split_size)), 0, 0

    def partial_spec(width):
        return pl.BlockSpec((None, None, None, hkv, rows, width), lambda i, j, s, lim: (i, j, s, 0, 0, 0))

    m, denom, acc = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, n_tiles, ns),
            in_specs=[
                pl.BlockSpec((None, rows, 1), lambda i, j, s, lim: (i, j, 0)),
                pl.BlockSpec((None, hkv, rows, d), lambda i, j, s, lim: (i, 0, j, 0)),
                pl.BlockSpec((None, split_size, hkv, d), kv_block),
                pl.BlockSpec((None, split_size, hkv, d), kv_block),
            ],
            out_specs=[partial_spec(1), partial_spec(1), partial_spec(d)],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((b, n_tiles, ns, hkv, rows, 1), f32),
            jax.ShapeDtypeStruct((b, n_tiles, ns, hkv, rows, 1), f32),
            jax.ShapeDtypeStruct((b, n_tiles, ns, hkv, rows, d), f32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        name="split_kv_attention_splits",
        **params,
    )(tile_limit, row_limit, q_tiles, k, v)

    def splits_spec(width):
        return pl.BlockSpec((None, None, ns, None, rows, width), lambda i, j, h: (i, j, 0, h, 0, 0))

    out = pl.pallas_call(
        combine_kernel,
        grid=(b, n_tiles, hkv),
        in_specs=[splits_spec(1), splits_spec(1), splits_spec(d)],
        out_specs=pl.BlockSpec((None, None, rows, d), lambda i, j, h: (i, h, j, 0)),
        out_shape=jax.ShapeDtypeStruct((b, hkv, n_tiles * rows, d), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        name="split_kv_attention_combine",
        **params,
    )(m, denom, acc)
    return untile(out, t, g, g)
