"""`split_kv_attention`: causal GQA attention of any number of queries against a KV cache.

    out = split_kv_attention(q, k, v, positions, kv_lengths)                  # default implementation
    out = split_kv_attention(..., config=SplitKVConfig(split_size=512, block_kv=128), implementation="interpret")

q [B, T, Hq, D]; k, v [B, S, Hkv, D] (Hq a multiple of Hkv); positions int [B, T]: the cache slot of
each query (it sees slots <= its position); kv_lengths int [B]: slots written per row. Decode (T = 1)
and prefill (T up to a window) take the same path. A capacity S that is not a multiple of split_size
is padded (a copy: size caches in multiples of it). Differentiable whatever the implementation: the
backward pass is that of the plain masked softmax (`reference.softmax_attention`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.autodiff import with_vjp_of
from pallas_kernels.registry import resolve
from pallas_kernels.split_kv_attention import gpu, reference, tpu


@dataclasses.dataclass(frozen=True)
class SplitKVConfig:
    """Fixed sizes, never derived from the batch: splits start at absolute multiples of `split_size`."""

    split_size: int = 512
    block_kv: int = 128

    def __post_init__(self):
        if self.block_kv <= 0 or self.split_size <= 0 or self.split_size % self.block_kv:
            raise ValueError(
                f"split_size ({self.split_size}) must be a positive multiple of block_kv ({self.block_kv})"
            )


VARIANTS = {"reference": reference.split_kv_attention, "gpu": gpu.split_kv_attention, "tpu": tpu.split_kv_attention}


def split_kv_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    kv_lengths: jax.Array,
    *,
    config: SplitKVConfig = SplitKVConfig(),
    scale: float | None = None,
    implementation: str | Callable | None = None,
) -> jax.Array:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"expected q [B, T, Hq, D] and k, v [B, S, Hkv, D]; got {q.shape}, {k.shape}, {v.shape}")
    b, t, hq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or hq % k.shape[2]:
        raise ValueError(f"q {q.shape} does not attend over k/v {k.shape}: rows, head dims or GQA grouping differ")
    if positions.shape != (b, t) or kv_lengths.shape != (b,):
        raise ValueError(
            f"positions must be [B, T] = {(b, t)} and kv_lengths [B]; got {positions.shape}, {kv_lengths.shape}"
        )
    pad = -k.shape[1] % config.split_size
    if pad:
        k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (k, v))
    fn = resolve("split_kv_attention", implementation, VARIANTS)
    scale = d**-0.5 if scale is None else float(scale)
    sizes = {"split_size": config.split_size, "block_kv": config.block_kv, "scale": scale}
    attention = with_vjp_of(lambda *args: fn(*args, **sizes), lambda *args: _softmax_for_grad(*args, scale=scale))
    return attention(q, k, v, positions.astype(jnp.int32), kv_lengths.astype(jnp.int32))


def _softmax_for_grad(q, k, v, positions, kv_lengths, *, scale):
    """The plain softmax with the slots no query of a row sees zeroed: they get no gradient and, were
    they unwritten (NaN), 0 · NaN would still poison the others' gradients."""
    last = jnp.max(reference.last_visible(positions, kv_lengths), axis=1)  # [B]
    seen = (jnp.arange(k.shape[1])[None, :] <= last[:, None])[:, :, None, None]
    k, v = (jnp.where(seen, x, jnp.zeros((), x.dtype)) for x in (k, v))
    return reference.softmax_attention(q, k, v, positions, kv_lengths, scale=scale)
