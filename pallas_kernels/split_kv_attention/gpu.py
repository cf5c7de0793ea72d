"""Split-KV attention for GPUs: Pallas with the Triton lowering (runs under `interpret=True` on CPU).

Two calls: one program per (row, query tile, KV head, split) writes that split's partials, then one
per (row, query tile, KV head) combines them. The cache stays in its [B, S, Hkv, D] layout; a
program loads only the blocks of its split that its queries can see. Triton's `dot` takes at least
16 rows and power-of-two shapes, so each query's G heads are padded with zero queries to a power of
two, at least 16 / QUERY_TILE (their rows are computed and dropped; rows of a dot never mix).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import gpu_params
from pallas_kernels.split_kv_attention.kernel import QUERY_TILE, combine_kernel, query_tiles, split_partial, untile
from pallas_kernels.split_kv_attention.reference import last_visible


def padded_group(g: int) -> int:
    return max(16 // QUERY_TILE, 1 << (g - 1).bit_length())


def _split_kernel(tile_limit_ref, row_limit_ref, q_ref, k_ref, v_ref, m_ref, l_ref, acc_ref, **config):
    q = q_ref[...].astype(jnp.float32)
    m, denom, acc = split_partial(row_limit_ref[...], tile_limit_ref[...], q, k_ref, v_ref, pl.program_id(3), **config)
    m_ref[...], l_ref[...], acc_ref[...] = m, denom, acc


def split_kv_attention(q, k, v, positions, kv_lengths, *, split_size, block_kv, scale, interpret=False):
    b, t, hq, d = q.shape
    s_len, hkv = k.shape[1], k.shape[2]
    g, ns = hq // hkv, s_len // split_size
    group = padded_group(g)
    rows = QUERY_TILE * group
    q_tiles, row_limit, tile_limit = query_tiles(
        q.reshape(b, t, hkv, g, d), last_visible(positions, kv_lengths), QUERY_TILE, group
    )
    n_tiles = tile_limit.shape[1]
    kernel = functools.partial(_split_kernel, split_size=split_size, block_kv=block_kv, scale=scale)
    f32 = jnp.float32

    def partial_spec(width):
        return pl.BlockSpec((None, None, None, None, rows, width), lambda i, j, h, s: (i, h, j, s, 0, 0))

    m, denom, acc = pl.pallas_call(
        kernel,
        grid=(b, n_tiles, hkv, ns),
        in_specs=[
            pl.BlockSpec((None, None), lambda i, j, h, s: (i, j)),
            pl.BlockSpec((None, rows, 1), lambda i, j, h, s: (i, j, 0)),
            pl.BlockSpec((None, None, rows, d), lambda i, j, h, s: (i, h, j, 0)),
            pl.BlockSpec((None, split_size, None, d), lambda i, j, h, s: (i, s, h, 0)),
            pl.BlockSpec((None, split_size, None, d), lambda i, j, h, s: (i, s, h, 0)),
        ],
        out_specs=[partial_spec(1), partial_spec(1), partial_spec(d)],
        out_shape=[
            jax.ShapeDtypeStruct((b, hkv, n_tiles, ns, rows, 1), f32),
            jax.ShapeDtypeStruct((b, hkv, n_tiles, ns, rows, 1), f32),
            jax.ShapeDtypeStruct((b, hkv, n_tiles, ns, rows, d), f32),
        ],
        # float32 K/V splits double-buffered are 256 KiB of shared memory, past an H100 block's 227 KiB
        compiler_params=gpu_params.triton(num_warps=4, num_stages=2 if jnp.dtype(k.dtype).itemsize <= 2 else 1),
        interpret=interpret,
        name="split_kv_attention_splits",
    )(tile_limit, row_limit, q_tiles, k, v)

    def splits_spec(width):
        return pl.BlockSpec((None, None, None, ns, rows, width), lambda i, h, j: (i, h, j, 0, 0, 0))

    out = pl.pallas_call(
        combine_kernel,
        grid=(b, hkv, n_tiles),
        in_specs=[splits_spec(1), splits_spec(1), splits_spec(d)],
        out_specs=pl.BlockSpec((None, None, rows, d), lambda i, h, j: (i, h, j, 0)),
        out_shape=jax.ShapeDtypeStruct((b, hkv, n_tiles * rows, d), q.dtype),
        compiler_params=gpu_params.triton(num_warps=4, num_stages=1),
        interpret=interpret,
        name="split_kv_attention_combine",
    )(m, denom, acc)
    return untile(out, t, g, group)
