"""The model's kernels: XLA's ops, or the batch-invariant ones of `pallas_kernels` (config `kernels`).

Modules call these three functions instead of `einsum` / their own norm / `attend`, passing the
`KernelsConfig`; the choice is made at trace time, so each config compiles its own program.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

import pallas_kernels
from interaction_jax.config import KernelsConfig

FAST = KernelsConfig()


_TARGET: list[str] = []  # set by `compiled_for`


@contextlib.contextmanager
def compiled_for(target: str):
    """Trace the Pallas kernels compiled for `target` ("gpu" or "tpu") whatever the default backend:
    how a CPU host compiles the bitwise model for a TPU or GPU it does not have (deviceless)."""
    if target not in ("gpu", "tpu"):
        raise ValueError(f"compiled_for: target must be 'gpu' or 'tpu', got {target!r}")
    _TARGET.append(target)
    try:
        yield
    finally:
        _TARGET.pop()


def _kernel_implementation() -> str:
    """The Pallas kernels compiled on GPU/TPU (or for the `compiled_for` target), interpreted elsewhere."""
    if _TARGET:
        return f"pallas_{_TARGET[-1]}"
    return "pallas" if jax.default_backend() in ("gpu", "tpu") else "interpret"


def implementation(kc: KernelsConfig, op: str) -> str:
    """ "xla" or a `pallas_kernels` implementation name for `op` (attention, matmul, norm) under `kc`."""
    choice = getattr(kc, op)
    if choice != "auto":
        return choice
    if kc.alignment == "fast":
        return "xla"
    return _kernel_implementation()


def matmul(x: jax.Array, w: jax.Array, kc: KernelsConfig) -> jax.Array:
    """x [..., K] @ w [K, N] in x's dtype."""
    impl = implementation(kc, "matmul")
    if impl == "xla":
        return jnp.einsum("...k,kn->...n", x, w.astype(x.dtype))
    tiles = pallas_kernels.MatmulConfig(kc.tile_m, kc.tile_n, kc.tile_k)
    return pallas_kernels.bi_matmul(x, w.astype(x.dtype), config=tiles, out_dtype=x.dtype, implementation=impl)


def xla_rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32 whatever the input dtype; returns the input dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, kc: KernelsConfig) -> jax.Array:
    impl = implementation(kc, "norm")
    if impl == "xla":
        return xla_rms_norm(x, scale, eps)
    return pallas_kernels.rms_norm(x, scale, eps=eps, implementation=impl)


def grouped_attention_weights(q: jax.Array, k: jax.Array, query_slots: jax.Array) -> jax.Array:
    """The causal attention weights float32 [B, Hkv, H/Hkv, T, S] of q [B, T, H, D] over cache keys
    k [B, S, Hkv, D] (query head h is kv head h // (H/Hkv), group member h % (H/Hkv)).

    Query t sees cache slots ≤ query_slots[b, t]. Masked scores are removed with `where` (not an
    additive bias) so a masked weight is exactly zero. Softmax runs in float32. A query at a slot ≥ S
    is an empty token (nothing written): it sees every slot, and its weights mean nothing.
    """
    b, t, h, d = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, t, hkv, h // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * d**-0.5
    visible = jnp.arange(k.shape[1])[None, None, :] <= query_slots[:, :, None]  # [B, T, S]
    visible = visible[:, None, None]
    scores = jnp.where(visible, scores, -jnp.inf)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    # exp(-inf) is exactly 0, so the masked weights need no second `where` (bit-identical, one pass less).
    weights = jnp.exp(scores - jnp.maximum(peak, -1e30))
    return weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-30)


def attention_weights(q: jax.Array, k: jax.Array, query_slots: jax.Array) -> jax.Array:
    """`grouped_attention_weights` per query head: float32 [B, H, T, S], the weights `xla_attend` uses
    (`Attention`'s probe reads them whichever path computed the output)."""
    weights = grouped_attention_weights(q, k, query_slots)
    b, hkv, g, t, s = weights.shape
    return weights.reshape(b, hkv * g, t, s)


def xla_attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array) -> jax.Array:
    """Causal GQA attention of q [B, T, H, D] over cache k, v [B, S, Hkv, D], with the weights of
    `grouped_attention_weights` (query t sees cache slots ≤ query_slots[b, t]). A query at a slot
    ≥ S is an empty token (nothing written); its output is unspecified.
    """
    b, t, h, d = q.shape
    weights = grouped_attention_weights(q, k, query_slots)
    # A masked weight is exactly 0, but 0 · NaN is NaN: zero the values past the last slot any query
    # of the row can see (unwritten or stale), so nothing left there can reach the output. Slots up to
    # that point were all written by this or an earlier call.
    last_seen = jnp.max(jnp.where(query_slots < k.shape[1], query_slots, -1), axis=1)  # [B]
    live = jnp.arange(v.shape[1])[None, :] <= last_seen[:, None]
    v = jnp.where(live[:, :, None, None], v, jnp.zeros((), v.dtype))
    out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


def xla_window_attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array, block: int) -> jax.Array:
    """`xla_attend` over a window whose queries see no slot past their own index (a whole window from an
    empty cache: `step.token_slots` gives a token at index t a slot <= t): queries in blocks of `block`,
    each block against the keys up to its own end only, so the scores above the diagonal's blocks are
    never computed. The same weights as `xla_attend` (a skipped key is one it masks), summed over fewer
    zeros. An empty token's output (slot >= S) is unspecified, as there."""
    t = q.shape[1]
    if block <= 0 or block >= t:
        return xla_attend(q, k, v, query_slots)
    blocks = [(start, min(start + block, t)) for start in range(0, t, block)]
    outs = [xla_attend(q[:, a:e], k[:, :e], v[:, :e], query_slots[:, a:e]) for a, e in blocks]
    return jnp.concatenate(outs, axis=1)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array, kc: KernelsConfig, window: bool = False
) -> jax.Array:
    """Causal GQA attention of q [B, T, H, D] over the cache k, v [B, S, Hkv, D]: query t sees slots
    <= query_slots[b, t]; a query at a slot >= S (an empty token) sees the row's written slots.
    `window`: the call is a whole window from an empty cache (no query sees a slot past its own index),
    which XLA's path computes in causal blocks (`xla_window_attend`); the kernels need no hint."""
    impl = implementation(kc, "attention")
    if impl == "xla":
        return xla_window_attend(q, k, v, query_slots, kc.window_block) if window else xla_attend(q, k, v, query_slots)
    # The row's written slots: up to the last one a real query of it sees (the cache is filled in order).
    kv_lengths = jnp.max(jnp.where(query_slots < k.shape[1], query_slots, -1), axis=1) + 1
    split = pallas_kernels.SplitKVConfig(kc.split_size, kc.block_kv)
    return pallas_kernels.split_kv_attention(q, k, v, query_slots, kv_lengths, config=split, implementation=impl)


def moe_expert_slots(x, expert_ids, w_gate, w_up, w_down, dispatch: str, kc: KernelsConfig) -> jax.Array:
    """The `pallas_kernels` MoE slot outputs float32 [N, k, D] for x [N, D]: `gemv`, `gmm`, or `auto`
    (gemv for at most `kc.moe_gemv_max_tokens` tokens: the count is static, so the choice is made at
    trace time). A token is computed bit-identically either way; an id outside [0, E) (another shard's
    expert) gives a zero slot. Compiled on GPU/TPU, interpreted on CPU."""
    if dispatch == "auto":
        dispatch = "gemv" if x.shape[0] <= kc.moe_gemv_max_tokens else "gmm"
    op = pallas_kernels.moe_gemv_slots if dispatch == "gemv" else pallas_kernels.moe_gmm_slots
    config = pallas_kernels.MoEConfig(kc.moe_block_rows, kc.moe_block_k)
    w = (a.astype(x.dtype) for a in (w_gate, w_up, w_down))
    return op(x, expert_ids, *w, config=config, implementation=_kernel_implementation())


def moe_combine(y: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ_j weights[n, j] · y[n, j] in float32, slot 0 first (the kernels' combine)."""
    return pallas_kernels.moe_combine(y, weights, implementation=_kernel_implementation())
