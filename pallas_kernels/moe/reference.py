"""The spec of the expert FFN: out[t] = Σ_j weights[t, j] · FFN_{ids[t, j]}(x[t]), slots summed in order.

FFN_e(x) = (silu(x · Wg[e]) ⊙ (x · Wu[e])) · Wd[e], with x [T, D], Wg, Wu [E, D, F], Wd [E, F, D].
The matmuls run in x's dtype on block_k × block_k tiles of the weights: each block_k-wide column
block of a product accumulates in float32 the [rows, block_k] @ [block_k, block_k] products along
the reduction (D for the first two, F for the last), in order; an F that is not a multiple of
block_k is zero-padded to one, which adds exactly nothing. The hidden h is cast back to x's dtype;
the k slots are combined in float32, slot 0 first. The result is float32 [T, D].

An assignment whose expert id is outside [0, E) is not computed and its slot output is exactly zero:
under expert parallelism each shard holds E/ep experts and passes ids relative to its first one, so
the other shards' assignments drop out here and their slots are filled in by theirs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_dot(a: jax.Array, b: jax.Array, block_k: int) -> jax.Array:
    """a [R, K] @ b [K, N] in float32, one block_k-wide column block at a time, each accumulated over
    K in blocks of block_k, in order: the kernels' tiling. A K or N that is not a multiple of block_k
    is zero-padded to one (the padding adds exactly nothing; the padded columns are dropped)."""
    n = b.shape[1]
    a = jnp.pad(a, ((0, 0), (0, -a.shape[1] % block_k)))
    b = jnp.pad(b, ((0, -b.shape[0] % block_k), (0, -n % block_k)))
    columns = []
    for c in range(0, b.shape[1], block_k):
        acc = jnp.zeros((a.shape[0], block_k), jnp.float32)
        for lo in range(0, a.shape[1], block_k):
            tile = b[lo : lo + block_k, c : c + block_k]
            acc = acc + jnp.dot(a[:, lo : lo + block_k], tile, preferred_element_type=jnp.float32)
        columns.append(acc)
    return jnp.concatenate(columns, axis=1)[:, :n]


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


def is_local(expert_ids: jax.Array, n_experts: int) -> jax.Array:
    """Which assignments name one of the experts [0, n_experts) held here."""
    return (expert_ids >= 0) & (expert_ids < n_experts)


def stable_argsort(keys: jax.Array) -> jax.Array:
    """The stable sort permutation of 1-D int keys. `lax.sort`, not `jnp.argsort`: inside `shard_map`
    on JAX 0.10 `jnp.argsort` drops the varying-manual-axes type of its result."""
    iota = jnp.arange(keys.shape[0], dtype=jnp.int32)
    return jax.lax.sort((keys.astype(jnp.int32), iota), num_keys=1, is_stable=True)[1]


def expert_slots(x, expert_ids, w_gate, w_up, w_down, *, block_rows: int, block_k: int) -> jax.Array:
    """Every (token, slot) through its expert, one at a time: float32 [T, k, D] (the arithmetic, not a
    fast path)."""
    del block_rows
    e = w_gate.shape[0]
    here = is_local(expert_ids, e)
    ids = jnp.where(here, expert_ids, 0)
    per_slot = jax.vmap(  # over tokens
        jax.vmap(  # over slots
            lambda xt, e: ffn(xt[None], w_gate[e], w_up[e], w_down[e], block_k)[0], in_axes=(None, 0)
        )
    )(x, ids)
    return jnp.where(here[..., None], per_slot, 0.0)


def moe_ffn(x, expert_ids, weights, w_gate, w_up, w_down, *, block_rows: int, block_k: int) -> jax.Array:
    return combine(expert_slots(x, expert_ids, w_gate, w_up, w_down, block_rows=block_rows, block_k=block_k), weights)


def dense_reference(x, expert_ids, weights, w_gate, w_up, w_down) -> jax.Array:
    """All experts on all tokens in float32 plain jnp, combined with one-hot routing weights: the oracle
    (an id outside [0, E) one-hots to zeros, so it contributes nothing)."""
    e = w_gate.shape[0]
    combine_w = jnp.einsum("tke,tk->te", jax.nn.one_hot(expert_ids, e, dtype=jnp.float32), weights.astype(jnp.float32))
    xf = x.astype(jnp.float32)
    h = jax.nn.silu(jnp.einsum("td,edf->etf", xf, w_gate)) * jnp.einsum("td,edf->etf", xf, w_up)
    y = jnp.einsum("etf,efd->etd", h, w_down)
    return jnp.einsum("etd,te->td", y, combine_w)


def ragged_slots(x, expert_ids, w_gate, w_up, w_down) -> jax.Array:
    """The slot outputs float32 [T, k, D] through `jax.lax.ragged_dot` over tokens sorted by expert:
    differentiable by JAX, so it is the kernels' backward pass (its numerics agree with theirs to float
    tolerance). Non-local assignments sort last, past Σ group sizes, where ragged_dot leaves zeros."""
    t, k = expert_ids.shape
    e = w_gate.shape[0]
    flat = expert_ids.reshape(-1)
    here = is_local(flat, e)
    key = jnp.where(here, flat, e)
    order = stable_argsort(key)
    sizes = jnp.bincount(key, length=e + 1)[:e].astype(jnp.int32)
    dt = x.dtype
    rows = jnp.take(x, order // k, axis=0)
    gate = jax.lax.ragged_dot(rows, w_gate.astype(dt), sizes, preferred_element_type=jnp.float32)
    up = jax.lax.ragged_dot(rows, w_up.astype(dt), sizes, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(gate) * up).astype(dt)
    y = jax.lax.ragged_dot(h, w_down.astype(dt), sizes, preferred_element_type=jnp.float32)
    y = jnp.where(jnp.take(here, order)[:, None], y, 0.0)
    return jnp.zeros_like(y).at[order].set(y).reshape(t, k, -1)


def ragged_ffn(x, expert_ids, weights, w_gate, w_up, w_down) -> jax.Array:
    """The whole FFN through `jax.lax.ragged_dot` (the peer the kernels are measured against)."""
    return combine(ragged_slots(x, expert_ids, w_gate, w_up, w_down), weights)
