"""Small building blocks shared across the model: norms, projections, the SwiGLU MLP.

Parameters are float32 and carry logical axis names; computation runs in the config's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[str | None, ...]


def compute_dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Axes, init=None) -> jax.Array:
    """A float32 parameter created with logical axis names (so it is born sharded)."""
    init = init if init is not None else nn.initializers.lecun_normal()
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32 whatever the input dtype; returns the input dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = param(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones)
        return rms_norm(x, scale, self.eps)


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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = compute_dtype(self.dtype)
        w = param(self, "kernel", (x.shape[-1], self.features), self.axes, self.kernel_init)
        y = jnp.einsum("...d,df->...f", x.astype(dtype), w.astype(dtype))
        if self.use_bias:
            b = param(self, "bias", (self.features,), (self.axes[1],), nn.initializers.zeros)
            y = y + b.astype(dtype)
        return y


class MLP(nn.Module):
    """A dense SwiGLU feed-forward (dense layers and the MoE shared expert)."""

    hidden: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        w_gate = param(self, "w_gate", (d, self.hidden), ("embed", "mlp"))
        w_up = param(self, "w_up", (d, self.hidden), ("embed", "mlp"))
        w_down = param(self, "w_down", (self.hidden, d), ("mlp", "embed"))
        x = x.astype(compute_dtype(self.dtype))
        h = jax.nn.silu(x @ w_gate.astype(x.dtype)) * (x @ w_up.astype(x.dtype))
        h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
        return h @ w_down.astype(x.dtype)
