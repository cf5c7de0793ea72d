"""`rms_norm(x [..., D], scale [D], eps)`: RMSNorm in float32, one row per program (rows are independent).

Differentiable whatever the implementation: the backward pass is the reference's."""

from __future__ import annotations

from collections.abc import Callable

import jax

from pallas_kernels.autodiff import with_vjp_of
from pallas_kernels.registry import resolve
from pallas_kernels.rms_norm import gpu, reference, tpu

VARIANTS = {"reference": reference.rms_norm, "gpu": gpu.rms_norm, "tpu": tpu.rms_norm}


def rms_norm(
    x: jax.Array, scale: jax.Array, *, eps: float = 1e-6, implementation: str | Callable | None = None
) -> jax.Array:
    if scale.shape != x.shape[-1:]:
        raise ValueError(f"scale must be [{x.shape[-1]}], got {scale.shape}")
    fn = resolve("rms_norm", implementation, VARIANTS)
    norm = with_vjp_of(
        lambda x2, scale: fn(x2, scale, eps=eps), lambda x2, scale: reference.rms_norm(x2, scale, eps=eps)
    )
    return norm(x.reshape(-1, x.shape[-1]), scale).reshape(x.shape)
