"""Output heads: the text LM head and the flow-matching mel head, with their losses and samplers.

The flow head learns the rectified-flow / OT-CFM velocity from Gaussian noise (t = 0) to the
normalised log-mel frames of one AUDIO_OUT token (t = 1), conditioned on the transformer's hidden
state; sampling integrates it with a few Euler steps.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import KernelsConfig
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model.layers import Dense, compute_dtype


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of flow time t ∈ [0, 1] (scaled to [0, 1000])."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = (t.astype(jnp.float32) * 1000.0)[..., None] * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def modulated_norm(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Adaptive LayerNorm without learned affine: the conditioning supplies shift and scale."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * (1.0 + scale) + shift).astype(x.dtype)


class FlowHead(nn.Module):
    """Velocity v(x_t, t | h): an MLP of adaptive-LayerNorm residual blocks (DiT-style, zero-init gates)."""

    out_dim: int
    hidden: int
    blocks: int
    dtype: str = "float32"
    kernels: KernelsConfig = kernels_lib.FAST

    @nn.compact
    def __call__(self, cond: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        dtype = self.dtype
        kc = self.kernels
        zeros = nn.initializers.zeros
        temb = Dense(self.hidden, (None, "mlp"), dtype, use_bias=True, kernels=kc, name="time_in")(
            timestep_embedding(t, 256).astype(compute_dtype(dtype))
        )
        c = nn.silu(Dense(self.hidden, ("embed", "mlp"), dtype, use_bias=True, kernels=kc, name="cond_in")(cond) + temb)
        h = Dense(self.hidden, (None, "mlp"), dtype, use_bias=True, kernels=kc, name="x_in")(x_t)
        for i in range(self.blocks):
            mod = Dense(
                3 * self.hidden, ("mlp", None), dtype, use_bias=True, kernels=kc, kernel_init=zeros, name=f"mod{i}"
            )(c)
            shift, scale, gate = jnp.split(mod, 3, axis=-1)
            y = modulated_norm(h, shift, scale)
            y = Dense(self.hidden, ("mlp", None), dtype, use_bias=True, kernels=kc, name=f"fc{i}a")(y)
            y = Dense(self.hidden, (None, "mlp"), dtype, use_bias=True, kernels=kc, name=f"fc{i}b")(nn.silu(y))
            h = h + gate * y
        shift, scale = jnp.split(
            Dense(2 * self.hidden, ("mlp", None), dtype, use_bias=True, kernels=kc, kernel_init=zeros, name="mod_out")(
                c
            ),
            2,
            -1,
        )
        out = Dense(self.out_dim, ("mlp", None), dtype, use_bias=True, kernels=kc, kernel_init=zeros, name="out")
        return out(modulated_norm(h, shift, scale)).astype(jnp.float32)


VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t [N, F], t [N]) -> v [N, F]


def flow_matching_loss(velocity: VelocityFn, target: jax.Array, mask: jax.Array, rng: jax.Array) -> jax.Array:
    """Rectified-flow loss: E‖v(x_t, t) − (x1 − x0)‖² with x_t = (1 − t)·x0 + t·x1, x0 ~ N(0, I).

    `target` [N, F] are the normalised frames x1; `mask` [N] selects the entries that count.
    """
    noise_key, time_key = jax.random.split(rng)
    x0 = jax.random.normal(noise_key, target.shape, jnp.float32)
    t = jax.random.uniform(time_key, target.shape[:1], jnp.float32)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * target
    err = jnp.mean(jnp.square(velocity(x_t, t) - (target - x0)), axis=-1)
    weight = mask.astype(jnp.float32)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def per_row(draw: Callable[[jax.Array, jax.Array], jax.Array], rng: jax.Array, x: jax.Array) -> jax.Array:
    """`draw(rng, x)` with one key for all rows (`rng` a single key), or row by row with one key per row
    (`rng` [N] keys): then a row's draw depends on its own key alone, never on the other rows of the batch."""
    if rng.ndim == 0:
        return draw(rng, x)
    return jax.vmap(lambda r, xi: draw(r, xi[None])[0])(rng, x)


def euler_sample(
    velocity: VelocityFn, shape: tuple[int, ...], steps: int, temperature: jax.Array, rng: jax.Array
) -> jax.Array:
    """Integrate dx/dt = v from noise (scaled by `temperature`) at t = 0 to t = 1 in `steps` Euler steps.

    `rng`: one key, or one key per row (`shape[0]` keys; see `per_row`).
    """
    noise = per_row(lambda r, z: jax.random.normal(r, z.shape, jnp.float32), rng, jnp.zeros(shape, jnp.float32))
    x = temperature * noise
    dt = 1.0 / steps

    def body(i, x):
        t = jnp.full(shape[:1], i * dt, jnp.float32)
        return x + dt * velocity(x, t)

    return jax.lax.fori_loop(0, steps, body, x)


def sample_text(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, rng: jax.Array) -> jax.Array:
    """Token ids from logits [N, V]: greedy when temperature is 0, else nucleus (top-p) sampling.

    temperature and top_p are traced scalars, so changing them does not recompile. `rng`: one key, or
    one key per row ([N] keys; see `per_row`).
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    choice = per_row(lambda r, x: jax.random.categorical(r, x, axis=-1), rng, jnp.where(keep, sorted_logits, -jnp.inf))
    sampled = jnp.take_along_axis(order, choice[..., None], axis=-1)[..., 0]
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def speak_probability(logits: jax.Array, silence_id: int) -> jax.Array:
    """float32 [...]: the probability of saying anything at all in a slot, 1 − p(`silence_id`), from
    logits [..., V] — the quantity `sample_text_or_silence` compares with its threshold."""
    return 1.0 - jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., silence_id]


def sample_text_or_silence(
    logits: jax.Array,
    silence_id: int,
    speak_threshold: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    rng: jax.Array,
) -> jax.Array:
    """Token ids from logits [N, V] in two decisions: first speak or stay silent, then what to say.

    The slot stays silent (`silence_id`) unless the probability of *anything else* exceeds
    `speak_threshold` (0.5: speak when that is more likely than not — greedy on the binary question,
    where plain greedy would compare silence with the single likeliest other token); otherwise the
    token is drawn by `sample_text` from the other tokens alone. Traced scalars; `rng` as `sample_text`.
    """
    logits = logits.astype(jnp.float32)
    speak = speak_probability(logits, silence_id)
    said = sample_text(logits.at[..., silence_id].set(-jnp.inf), temperature, top_p, rng)
    return jnp.where(speak > speak_threshold, said, silence_id).astype(jnp.int32)
