"""`bi_matmul`: `x [..., K] @ w [K, N]` whose rows do not depend on each other, bit for bit.

    y = bi_matmul(x, w)                                         # default implementation
    y = bi_matmul(x, w, config=MatmulConfig(bm=64, bn=128, bk=128), implementation="interpret")

Fixed tiles from the config (never from the batch), float32 accumulation, no split-K. A K that is not
a multiple of bk is zero-padded (zeros add exactly nothing). Differentiable whatever the
implementation: the backward pass is that of XLA's dot with float32 accumulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.autodiff import with_vjp_of
from pallas_kernels.bi_matmul import gpu, reference, tpu
from pallas_kernels.registry import resolve


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    bm: int = 128
    bn: int = 128
    bk: int = 128

    def __post_init__(self):
        if min(self.bm, self.bn, self.bk) <= 0:
            raise ValueError(f"tile sizes must be positive, got {self}")


VARIANTS = {"reference": reference.bi_matmul, "gpu": gpu.bi_matmul, "tpu": tpu.bi_matmul}


def bi_matmul(
    x: jax.Array,
    w: jax.Array,
    *,
    config: MatmulConfig = MatmulConfig(),
    out_dtype=None,
    implementation: str | Callable | None = None,
) -> jax.Array:
    if w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"bi_matmul multiplies [..., K] by [K, N]; got {x.shape} and {w.shape}")
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    pad = -k % config.bk
    if pad:
        x2, w = jnp.pad(x2, ((0, 0), (0, pad))), jnp.pad(w, ((0, pad), (0, 0)))
    out_dtype = jnp.result_type(x.dtype, w.dtype) if out_dtype is None else out_dtype
    fn = resolve("bi_matmul", implementation, VARIANTS)
    matmul = with_vjp_of(
        lambda x2, w: fn(x2, w, bm=config.bm, bn=config.bn, bk=config.bk, out_dtype=out_dtype),
        lambda x2, w: jnp.dot(x2, w, preferred_element_type=jnp.float32).astype(out_dtype),
    )
    y = matmul(x2, w)
    return y.reshape(*lead, w.shape[1])
