"""Small building blocks shared across the model: norms, projections, the SwiGLU MLP.

Parameters are float32 and carry logical axis names; computation runs in the config's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import KernelsConfig
from interaction_jax.model import kernels

Axes = tuple[str | None, ...]


def compute_dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Axes, init=None) -> jax.Array:
    """A float32 parameter created with logical axis names (so it is born sharded)."""
    init = init if init is not None else nn.initializers.lecun_normal()
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


rms_norm = kernels.xla_rms_norm  # the XLA norm (kernels.rms_norm chooses per config)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    axis_name: str = "embed"
    kernels: KernelsConfig = kernels.FAST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = param(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones)
        return kernels.rms_norm(x, scale, self.eps, self.kernels)


class LayerNorm(nn.Module):
    """LayerNorm (never BatchNorm: a row's result must not depend on other rows)."""

    eps: float = 1e-6
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = param(self, "scale", (d,), (self.axis_name,), nn.initializers.ones)
        bias = param(self, "bias", (d,), (self.axis_name,), nn.initializers.zeros)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale + bias).astype(x.dtype)


class Dense(nn.Module):
    """x @ W (+ b) over the last axis, with logical names on W; computes in `dtype`."""

    features: int
    axes: tuple[str | None, str | None]
    dtype: str = "float32"
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer | None = None
    kernels: KernelsConfig = kernels.FAST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = compute_dtype(self.dtype)
        w = param(self, "kernel", (x.shape[-1], self.features), self.axes, self.kernel_init)
        y = kernels.matmul(x.astype(dtype), w, self.kernels)
        if self.use_bias:
            b = param(self, "bias", (self.features,), (self.axes[1],), nn.initializers.zeros)
            y = y + b.astype(dtype)
        return y


class MLP(nn.Module):
    """A dense SwiGLU feed-forward (dense layers and the MoE shared expert)."""

    hidden: int
    dtype: str = "float32"
    kernels: KernelsConfig = kernels.FAST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kc = self.kernels
        w_gate = param(self, "w_gate", (d, self.hidden), ("embed", "mlp"))
        w_up = param(self, "w_up", (d, self.hidden), ("embed", "mlp"))
        w_down = param(self, "w_down", (self.hidden, d), ("mlp", "embed"))
        x = x.astype(compute_dtype(self.dtype))
        h = jax.nn.silu(kernels.matmul(x, w_gate, kc)) * kernels.matmul(x, w_up, kc)
        h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
        return kernels.matmul(h, w_down, kc)
