"""Split-KV attention against its peers on decode and prefill shapes.

Peers on the same shapes: `jax.nn.dot_product_attention` (XLA, masked) and, on GPUs, JAX's own Pallas
decode attention (`jax.experimental.pallas.ops.gpu.decode_attention`) where it is shipped. Bytes are
the K/V the queries can see (the physical floor of decode) plus q and out; the roofline fraction is
against the measured copy bandwidth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.benchmarking import time_fn
from pallas_kernels.split_kv_attention.api import SplitKVConfig, split_kv_attention

HQ, HKV, D = 32, 8, 128


def shapes(quick: bool) -> list[tuple[str, int, int, int]]:
    """(kind, batch, context, T)."""
    if quick:
        return [("decode", 1, 256, 1), ("decode", 2, 512, 16), ("prefill", 1, 256, 64)]
    decode = [("decode", b, ctx, t) for b in (1, 8, 64) for ctx in (1024, 8192, 32768) for t in (1, 16)]
    return [*decode, ("prefill", 1, 4096, 512), ("prefill", 4, 2048, 256)]


def _peer_xla(q, k, v, positions, kv_lengths):
    visible = jnp.arange(k.shape[1])[None, None, :] <= jnp.minimum(positions, kv_lengths[:, None] - 1)[..., None]
    return jax.nn.dot_product_attention(q, k, v, mask=visible[:, None], implementation="xla")


def _peer_pallas_decode():
    try:
        from jax.experimental.pallas.ops.gpu import decode_attention
    except ImportError:
        return None
    if jax.default_backend() != "gpu":
        return None

    def run(q, k, v, positions, kv_lengths):  # T = 1 only: [B, Hq, D] against [B, S, Hkv, D]
        return decode_attention.gqa(q[:, 0], k, v, kv_seq_len=kv_lengths)

    return run


def run(*, implementation: str, quick: bool, bandwidth: float, iters: int) -> list[dict]:
    dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    config = SplitKVConfig()
    pallas_decode = _peer_pallas_decode()
    rows = []
    rng = np.random.default_rng(0)
    for kind, b, ctx, t in shapes(quick):
        capacity = -(-ctx // config.split_size) * config.split_size
        q = jnp.asarray(rng.standard_normal((b, t, HQ, D)), dtype)
        k = jnp.asarray(rng.standard_normal((b, capacity, HKV, D)), dtype)
        v = jnp.asarray(rng.standard_normal((b, capacity, HKV, D)), dtype)
        positions = jnp.broadcast_to(jnp.arange(ctx - t, ctx, dtype=jnp.int32), (b, t))
        kv_lengths = jnp.full((b,), ctx, jnp.int32)
        ours = jax.jit(lambda *a: split_kv_attention(*a, config=config, implementation=implementation))
        seconds = time_fn(ours, q, k, v, positions, kv_lengths, iters=iters)
        xla = time_fn(jax.jit(_peer_xla), q, k, v, positions, kv_lengths, iters=iters)
        peer = None
        if pallas_decode is not None and t == 1:
            peer = time_fn(jax.jit(pallas_decode), q, k, v, positions, kv_lengths, iters=iters)
        itemsize = jnp.dtype(dtype).itemsize
        nbytes = (2 * b * ctx * HKV * D + 2 * b * t * HQ * D) * itemsize
        flops = 4 * b * t * HQ * ctx * D
        rows.append(
            {
                "kind": kind,
                "batch": b,
                "context": ctx,
                "T": t,
                "ms": 1e3 * seconds,
                "GB/s": nbytes / seconds / 1e9,
                "TFLOP/s": flops / seconds / 1e12,
                "of HBM": nbytes / seconds / bandwidth,
                "xla ms": 1e3 * xla,
                "× xla": xla / seconds,
                "pallas-decode ms": None if peer is None else 1e3 * peer,
                "× pallas-decode": None if peer is None else peer / seconds,
            }
        )
    return rows


COLUMNS = [
    ("kind", "kind", ""),
    ("batch", "B", "d"),
    ("context", "ctx", "d"),
    ("T", "T", "d"),
    ("ms", "ms", ".3f"),
    ("GB/s", "GB/s", ".1f"),
    ("TFLOP/s", "TFLOP/s", ".2f"),
    ("of HBM", "of BW", ".0%"),
    ("xla ms", "XLA ms", ".3f"),
    ("× xla", "× XLA", ".2f"),
    ("pallas-decode ms", "JAX Pallas ms", ".3f"),
    ("× pallas-decode", "× JAX Pallas", ".2f"),
]
