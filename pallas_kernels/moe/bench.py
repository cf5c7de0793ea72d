"""`moe_gemv` and `moe_gmm` against their peers on decode shapes (T = 1–64 tokens).

Peers on the same inputs, each jitted: `jax.lax.ragged_dot` over tokens sorted by expert
(`reference.ragged_ffn`), an XLA gather + einsum (each assignment's expert weights taken into
[T, k, D, F]; skipped, —, where that copy would pass ~4 GB), and a dense einsum running every expert
on every token in the input dtype. Bytes are the weights of the experts the batch selects (each
distinct expert's Wg, Wu, Wd read once: the physical floor at decode) plus x in and the float32 out;
the roofline fraction is against the measured copy bandwidth. Ratios are peer time / `moe_gemv` time
(> 1: ours is faster). `summary` names, per expert config, the smallest T where `moe_gmm` beats
`moe_gemv`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.benchmarking import time_fn
from pallas_kernels.moe import api, reference

GATHER_LIMIT_BYTES = 4e9


def shapes(quick: bool) -> list[tuple[int, int, int, int, int]]:
    """(T, E, k, D, F)."""
    if quick:
        return [(t, 8, 2, 128, 128) for t in (1, 4, 16)]
    # Spanning E 8–128, k 2–8, D and F 1024–4096; all weights of a config stay under 2 GB in bf16, and
    # even T = 1 selects ≥ 100 MB of them, more than any L2 cache holds.
    experts = [(8, 2, 4096, 4096), (32, 4, 2048, 2048), (64, 8, 4096, 1024), (128, 8, 1024, 2048)]
    return [(t, *cfg) for cfg in experts for t in (1, 2, 4, 8, 16, 32, 64)]


def _peer_gather(x, expert_ids, weights, w_gate, w_up, w_down):
    """What a plain XLA port would do: gather the k experts of every token, then batched matmuls."""
    dt, f32 = x.dtype, jnp.float32
    wg, wu, wd = (jnp.take(w, expert_ids, axis=0) for w in (w_gate, w_up, w_down))  # [T, k, D, F] / [T, k, F, D]
    gate = jnp.einsum("td,tkdf->tkf", x, wg, preferred_element_type=f32)
    up = jnp.einsum("td,tkdf->tkf", x, wu, preferred_element_type=f32)
    y = jnp.einsum("tkf,tkfd->tkd", (jax.nn.silu(gate) * up).astype(dt), wd, preferred_element_type=f32)
    return jnp.einsum("tkd,tk->td", y, weights.astype(f32))


def _peer_dense(x, expert_ids, weights, w_gate, w_up, w_down):
    """Every expert on every token (reads all E experts), combined with one-hot routing weights."""
    dt, f32 = x.dtype, jnp.float32
    combine_w = jnp.einsum("tke,tk->te", jax.nn.one_hot(expert_ids, w_gate.shape[0], dtype=f32), weights.astype(f32))
    gate = jnp.einsum("td,edf->etf", x, w_gate, preferred_element_type=f32)
    up = jnp.einsum("td,edf->etf", x, w_up, preferred_element_type=f32)
    y = jnp.einsum("etf,efd->etd", (jax.nn.silu(gate) * up).astype(dt), w_down, preferred_element_type=f32)
    return jnp.einsum("etd,te->td", y, combine_w)


def _expert_weights(rng, e, d, f, dtype):
    """Wg, Wu [E, D, F] and Wd [E, F, D], scaled so activations stay O(1)."""
    shapes_ = ((e, d, f), (e, d, f), (e, f, d))
    return [jnp.asarray(rng.standard_normal(s, np.float32) / np.sqrt(s[1]), dtype) for s in shapes_]


def run(*, implementation: str, quick: bool, bandwidth: float, iters: int) -> list[dict]:
    dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    itemsize = jnp.dtype(dtype).itemsize
    config = api.MoEConfig()
    gemv = jax.jit(functools.partial(api.moe_gemv, config=config, implementation=implementation))
    gmm = jax.jit(functools.partial(api.moe_gmm, config=config, implementation=implementation))
    ragged, gather, dense = (jax.jit(f) for f in (reference.ragged_ffn, _peer_gather, _peer_dense))
    rng = np.random.default_rng(0)
    rows, current = [], None
    for t, e, k, d, f in shapes(quick):
        if current != (e, d, f):  # one set of expert weights per config, shared across T
            current, (w_gate, w_up, w_down) = (e, d, f), _expert_weights(rng, e, d, f, dtype)
        x = jnp.asarray(rng.standard_normal((t, d), np.float32), dtype)
        expert_ids = np.argsort(rng.random((t, e)), axis=1)[:, :k].astype(np.int32)  # distinct per token
        logits = rng.standard_normal((t, k))
        weights = jnp.asarray(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), jnp.float32)
        args = (x, jnp.asarray(expert_ids), weights, w_gate, w_up, w_down)

        seconds = time_fn(gemv, *args, iters=iters)
        gmm_s = time_fn(gmm, *args, iters=iters)
        ragged_s = time_fn(ragged, *args, iters=iters)
        gather_s = None
        if 3 * t * k * d * f * itemsize <= GATHER_LIMIT_BYTES:
            gather_s = time_fn(gather, *args, iters=iters)
        dense_s = time_fn(dense, *args, iters=iters)
        nbytes = len(np.unique(expert_ids)) * 3 * d * f * itemsize + t * d * (itemsize + 4)
        rows.append(
            {
                "T": t,
                "E": e,
                "k": k,
                "D": d,
                "F": f,
                "gemv ms": 1e3 * seconds,
                "gmm ms": 1e3 * gmm_s,
                "gmm_faster": gmm_s < seconds,
                "selected MB": nbytes / 1e6,
                "GB/s": nbytes / seconds / 1e9,
                "of BW": nbytes / seconds / bandwidth,
                "× ragged_dot": ragged_s / seconds,
                "× gather": None if gather_s is None else gather_s / seconds,
                "× dense": dense_s / seconds,
                # Peer times themselves: in the JSON, not the table.
                "ragged_dot ms": 1e3 * ragged_s,
                "gather ms": None if gather_s is None else 1e3 * gather_s,
                "dense ms": 1e3 * dense_s,
            }
        )
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Per expert config, the first T (of those measured) where moe_gmm is faster than moe_gemv."""
    lines, configs = [], dict.fromkeys((r["E"], r["k"], r["D"], r["F"]) for r in rows)
    for e, k, d, f in configs:
        mine = [r for r in rows if (r["E"], r["k"], r["D"], r["F"]) == (e, k, d, f)]
        first = next((r["T"] for r in mine if r["gmm_faster"]), None)
        where = f"at T = {first}" if first is not None else f"not within T ≤ {max(r['T'] for r in mine)}"
        lines.append(f"E={e} k={k} D={d} F={f}: moe_gmm overtakes moe_gemv {where}")
    return lines


COLUMNS = [
    ("T", "T", "d"),
    ("E", "E", "d"),
    ("k", "k", "d"),
    ("D", "D", "d"),
    ("F", "F", "d"),
    ("gemv ms", "gemv ms", ".3f"),
    ("gmm ms", "gmm ms", ".3f"),
    ("selected MB", "sel. MB", ".1f"),
    ("GB/s", "GB/s", ".1f"),
    ("of BW", "of BW", ".0%"),
    ("× ragged_dot", "× ragged_dot", ".2f"),
    ("× gather", "× gather", ".2f"),
    ("× dense", "× dense", ".2f"),
]
