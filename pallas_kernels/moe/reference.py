"""The spec of the expert FFN: out[t] = Σ_j weights[t, j] · FFN_{ids[t, j]}(x[t]), slots summed in order.

FFN_e(x) = (silu(x · Wg[e]) ⊙ (x · Wu[e])) · Wd[e], with x [T, D], Wg, Wu [E, D, F], Wd [E, F, D].
The matmuls run in x's dtype with float32 accumulation over fixed blocks of `block_k` along the
reduction (D for the first two, F for the last), in order; the hidden h is cast back to x's dtype;
the k slots are combined in float32, slot 0 first. The result is float32 [T, D].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_dot(a: jax.Array, b: jax.Array, block_k: int) -> jax.Array:
    """a [R, K] @ b [K, N] accumulated in float32 over K blocks in order (K a multiple of block_k)."""
    acc = jnp.zeros((a.shape[0], b.shape[1]), jnp.float32)
    for lo in range(0, a.shape[1], block_k):
        acc = acc + jnp.dot(a[:, lo : lo + block_k], b[lo : lo + block_k], preferred_element_type=jnp.float32)
    return acc


def ffn(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, block_k: int) -> jax.Array:
    """One expert's SwiGLU on rows x [R, D] → float32 [R, D]."""
    dt = x.dtype
    h = jax.nn.silu(blocked_dot(x, w_gate.astype(dt), block_k)) * blocked_dot(x, w_up.astype(dt), block_k)
    return blocked_dot(h.astype(dt), w_down.astype(dt), block_k)


def combine(y: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ_j weights[..., j] · y[..., j, :] in float32, slot 0 first: y [..., k, D], weights [..., k]."""
    out = weights[..., 0, None].astype(jnp.float32) * y[..., 0, :]
    for j in range(1, y.shape[-2]):
        out = out + weights[..., j, None].astype(jnp.float32) * y[..., j, :]
    return out


def moe_ffn(x, expert_ids, weights, w_gate, w_up, w_down, *, block_rows: int, block_k: int) -> jax.Array:
    """Every (token, slot) through its expert, one at a time (the arithmetic, not a fast path)."""
    del block_rows
    per_slot = jax.vmap(  # over tokens
        jax.vmap(  # over slots
            lambda xt, e: ffn(xt[None], w_gate[e], w_up[e], w_down[e], block_k)[0], in_axes=(None, 0)
        )
    )(x, expert_ids)
    return combine(per_slot, weights)


def dense_reference(x, expert_ids, weights, w_gate, w_up, w_down) -> jax.Array:
    """All experts on all tokens in float64-free plain jnp, combined with one-hot routing weights: the oracle."""
    e = w_gate.shape[0]
    combine_w = jnp.einsum("tke,tk->te", jax.nn.one_hot(expert_ids, e, dtype=jnp.float32), weights.astype(jnp.float32))
    xf = x.astype(jnp.float32)
    h = jax.nn.silu(jnp.einsum("td,edf->etf", xf, w_gate)) * jnp.einsum("td,edf->etf", xf, w_up)
    y = jnp.einsum("etf,efd->etd", h, w_down)
    return jnp.einsum("etd,te->td", y, combine_w)


def ragged_ffn(x, expert_ids, weights, w_gate, w_up, w_down) -> jax.Array:
    """The same FFN through `jax.lax.ragged_dot` over tokens sorted by expert: differentiable by JAX, so
    it serves as `moe_gmm`'s backward pass (its numerics agree with the kernels to float tolerance)."""
    t, k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=w_gate.shape[0]).astype(jnp.int32)
    dt = x.dtype
    rows = x[order // k]
    gate = jax.lax.ragged_dot(rows, w_gate.astype(dt), sizes, preferred_element_type=jnp.float32)
    up = jax.lax.ragged_dot(rows, w_up.astype(dt), sizes, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(gate) * up).astype(dt)
    y = jax.lax.ragged_dot(h, w_down.astype(dt), sizes, preferred_element_type=jnp.float32)
    y = jnp.zeros_like(y).at[order].set(y).reshape(t, k, -1)
    return combine(y, weights)
