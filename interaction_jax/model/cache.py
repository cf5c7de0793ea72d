"""The KV cache: an explicit pytree passed into and returned from `step`, never a mutable collection.

Layout: one {'k', 'v'} pair of [B, S, Hkv, Dh] arrays per layer (a tuple), or with `model.scan_layers`
one {'k', 'v'} pair of [L, B, S, Hkv, Dh] arrays stacked by layer (what the layer scan slices), plus
per-row counters: `length` (cache slots written so far) and `chunk` (micro-turn chunks completed).
Slots are written in order; RoPE positions are applied before the write, so the cache itself is
position-free and a training window (any global offset) and a live session share one code path.
`stack_cache` / `unstack_cache` convert between the two layouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.config import ModelConfig

# {'layers': tuple[{'k': Array, 'v': Array}, ...] or {'k': Array, 'v': Array} (stacked), 'length': int32[B],
#  'chunk': int32[B]}
Cache = dict

CACHE_AXES = ("cache_batch", "cache_len", "act_kv_heads", None)
STACKED_CACHE_AXES = ("layers", *CACHE_AXES)  # "layers" maps to no mesh axis (config.MeshConfig.rules)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> Cache:
    """An empty cache for `batch` rows of `max_len` slots each, in the compute dtype (stacked by layer
    when `cfg.scan_layers`)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
    # Distinct buffers (not one shared zeros array): the serving tick donates the whole cache.
    if cfg.scan_layers:
        layers = {"k": jnp.zeros((cfg.n_layers, *shape), dtype), "v": jnp.zeros((cfg.n_layers, *shape), dtype)}
    else:
        layers = tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers))
    return {"layers": layers, "length": jnp.zeros((batch,), jnp.int32), "chunk": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(cfg: ModelConfig) -> Cache:
    """Logical axis names for every leaf of the cache (for shardings)."""
    if cfg.scan_layers:
        layers = {"k": STACKED_CACHE_AXES, "v": STACKED_CACHE_AXES}
    else:
        layers = tuple({"k": CACHE_AXES, "v": CACHE_AXES} for _ in range(cfg.n_layers))
    return {"layers": layers, "length": ("cache_batch",), "chunk": ("cache_batch",)}


def is_stacked(cache: Cache) -> bool:
    """Whether the cache's layers are stacked into [L, ...] arrays (the `scan_layers` layout)."""
    return isinstance(cache["layers"], dict)


def capacity(cache: Cache) -> int:
    return cache["layers"]["k"].shape[2] if is_stacked(cache) else cache["layers"][0]["k"].shape[1]


def stack_cache(cache: Cache) -> Cache:
    """The per-layer layout → the stacked one (layer i at index i); counters unchanged."""
    layers = cache["layers"]
    return cache | {"layers": {n: jnp.stack([layer[n] for layer in layers]) for n in ("k", "v")}}


def unstack_cache(cache: Cache) -> Cache:
    """The stacked layout → one {'k', 'v'} pair per layer; counters unchanged."""
    stacked = cache["layers"]
    n_layers = stacked["k"].shape[0]
    return cache | {"layers": tuple({n: stacked[n][i] for n in ("k", "v")} for i in range(n_layers))}


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int) -> int:
    """Bytes of a cache, without building it (for memory planning)."""
    per_layer = 2 * batch * max_len * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return cfg.n_layers * per_layer


def write(kv: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """kv[b, slots[b, t]] = new[b, t]; a slot outside [0, capacity) (an empty token) writes nothing."""
    rows = jnp.arange(kv.shape[0])[:, None]
    slots = jnp.where(slots < 0, kv.shape[1], slots)  # .at[] would wrap a negative slot to the end
    return kv.at[rows, slots].set(new.astype(kv.dtype), mode="drop")
