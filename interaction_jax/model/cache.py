"""The KV cache: an explicit pytree passed into and returned from `step`, never a mutable collection.

Layout: one {'k', 'v'} pair of [B, S, Hkv, Dh] arrays per layer, plus per-row counters:
`length` (cache slots written so far) and `chunk` (micro-turn chunks completed). Slots are written
in order; RoPE positions are applied before the write, so the cache itself is position-free and a
training window (any global offset) and a live session share one code path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.config import ModelConfig

Cache = dict  # {'layers': tuple[{'k': Array, 'v': Array}, ...], 'length': int32[B], 'chunk': int32[B]}

CACHE_AXES = ("cache_batch", "cache_len", "act_kv_heads", None)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> Cache:
    """An empty cache for `batch` rows of `max_len` slots each, in the compute dtype."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
    layers = tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers))
    # Distinct buffers (not one shared zeros array): the serving tick donates the whole cache.
    return {"layers": layers, "length": jnp.zeros((batch,), jnp.int32), "chunk": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(cfg: ModelConfig) -> Cache:
    """Logical axis names for every leaf of the cache (for shardings)."""
    layer = {"k": CACHE_AXES, "v": CACHE_AXES}
    return {"layers": tuple(layer for _ in range(cfg.n_layers)), "length": ("cache_batch",), "chunk": ("cache_batch",)}


def capacity(cache: Cache) -> int:
    return cache["layers"][0]["k"].shape[1]


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int) -> int:
    """Bytes of a cache, without building it (for memory planning)."""
    per_layer = 2 * batch * max_len * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return cfg.n_layers * per_layer


def write(kv: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """kv[b, slots[b, t]] = new[b, t]; a slot outside [0, capacity) (an empty token) writes nothing."""
    rows = jnp.arange(kv.shape[0])[:, None]
    slots = jnp.where(slots < 0, kv.shape[1], slots)  # .at[] would wrap a negative slot to the end
    return kv.at[rows, slots].set(new.astype(kv.dtype), mode="drop")
