"""Unit tests of the model's small pure functions and modules (DESIGN §5–§6).

Kept cheap for a shared two-core CPU: inputs come from numpy (every new `jax.random` shape costs an
XLA compile), parameters of modules under test are random fills of `eval_shape` trees unless the
test is about the initialiser, and anything with more than a few ops runs under one `jax.jit`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import tokenizer
from interaction_jax.model import attention, embed, heads, layers
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib
from interaction_jax.stream import Kind
from interaction_jax.testing import random_batch
from interaction_jax.train import loss as loss_lib

TINY = config_lib.preset("tiny")
# A smaller-than-tiny model for the end-to-end loss checks (compiles fast on CPU; no video, whose
# embedding path the Embedder tests cover).
SMALL = config_lib.override(
    TINY,
    [
        "stream.video=false",
        "model.d_model=64",
        "model.n_layers=1",
        "model.head_dim=16",
        "model.expert_mlp=64",
        "model.dense_mlp=128",
        "model.flow_hidden=64",
        "model.flow_blocks=1",
    ],
)


def randn(seed: int, *shape: int, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def fill(shapes, seed: int, scale: float = 0.3):
    """Random parameters for a tree of ShapeDtypeStructs; norm scales are 1 + noise."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        x = rng.normal(size=s.shape) * scale
        if jax.tree_util.keystr(path).endswith("['scale']"):
            x = 1.0 + x
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def module_params(module: nn.Module, *args, seed: int = 0, scale: float = 0.3):
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args)))["params"]
    return fill(shapes, seed, scale)


# ------------------------------------------------------------------------------------------------
# layers


def test_rms_norm_matches_numpy():
    x = np.asarray(randn(0, 3, 5, 16, scale=3.0))
    scale = np.asarray(randn(1, 16))
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6) * scale
    got = layers.rms_norm(jnp.asarray(x), jnp.asarray(scale), 1e-6)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # bfloat16 in → bfloat16 out (computed in float32).
    got16 = layers.rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(scale), 1e-6)
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=2e-2, atol=2e-2)


def test_layer_norm_standardises_before_affine():
    x = 5.0 + randn(0, 4, 3, 32, scale=4.0)
    module = layers.LayerNorm()
    variables = jax.jit(module.init)(jax.random.key(1), x)
    assert set(variables) == {"params"}
    params = nn.unbox(variables)["params"]
    np.testing.assert_array_equal(params["scale"], np.ones(32))
    np.testing.assert_array_equal(params["bias"], np.zeros(32))
    apply = jax.jit(module.apply)
    y = np.asarray(apply({"params": params}, x), np.float64)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-4)
    # The affine part is applied per feature after standardising.
    scale, bias = jnp.linspace(0.5, 2.0, 32), jnp.linspace(-1.0, 1.0, 32)
    y2 = apply({"params": {"scale": scale, "bias": bias}}, x)
    np.testing.assert_allclose(y2, y * np.asarray(scale) + np.asarray(bias), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# attention.rope


@jax.jit
def _rope_scores(q, k, pq, pk):
    """Per-pair dot products rope(q, pq[i]) · rope(k, pk[i]) for position arrays pq, pk [N]."""
    n = pq.shape[0]
    rq = attention.rope(jnp.broadcast_to(q, (1, n, 1, q.shape[-1])), pq[None], 10000.0)[0, :, 0]
    rk = attention.rope(jnp.broadcast_to(k, (1, n, 1, k.shape[-1])), pk[None], 10000.0)[0, :, 0]
    return jnp.sum(rq * rk, axis=-1)


def test_rope_scores_depend_only_on_relative_position():
    q, k = randn(0, 16, scale=0.25), randn(1, 16, scale=0.25)
    deltas = np.array([0, 3, -5, 17])
    pk = np.concatenate([np.full(4, 7), np.full(4, 27), np.full(4, 98)])
    pq = pk + np.tile(deltas, 3)
    scores = np.asarray(_rope_scores(q, k, jnp.asarray(pq), jnp.asarray(pk))).reshape(3, 4)
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
    np.testing.assert_allclose(scores[2], scores[0], atol=1e-5)
    # …and they do depend on the relative position.
    assert np.min(np.abs(np.diff(scores[0]))) > 1e-3


def test_rope_position_zero_is_identity_and_norm_preserved():
    x = randn(0, 2, 3, 4, 16)
    rope = jax.jit(attention.rope, static_argnums=2)
    np.testing.assert_array_equal(rope(x, jnp.zeros((2, 3), jnp.int32), 10000.0), x)
    y = rope(x, jnp.array([[1, 50, 999], [3, 0, 12345]]), 10000.0)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_array_equal(y[1, 1], x[1, 1])  # the row at position 0
    assert not np.allclose(y[0, 0], x[0, 0])


# ------------------------------------------------------------------------------------------------
# attention.attend

attend = jax.jit(attention.attend)


def attend_reference(q, k, v, query_slots):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    group = h // hkv
    out = np.zeros_like(q)
    for bi in range(b):
        for ti in range(t):
            n = min(int(query_slots[bi, ti]) + 1, s)
            for hi in range(h):
                kh = hi // group  # query head h reads kv head h // (H / Hkv)
                scores = k[bi, :n, kh] @ q[bi, ti, hi] / np.sqrt(d)
                w = np.exp(scores - scores.max())
                out[bi, ti, hi] = (w / w.sum()) @ v[bi, :n, kh]
    return out


# Query slots at arbitrary (non-contiguous, unordered) offsets per row, including ones at or past the
# capacity 10 (an empty token's slot, which sees every slot).
QUERY_SLOTS = np.array([[0, 5, 2, 10], [7, 3, 11, 4]], np.int32)


@pytest.mark.parametrize("group", [1, 2])
def test_attend_matches_reference(group):
    hkv, d, s = 2, 8, 10
    q = randn(group, 2, 4, hkv * group, d)
    k, v = randn(10 + group, 2, s, hkv, d), randn(20 + group, 2, s, hkv, d)
    got = attend(q, k, v, jnp.asarray(QUERY_SLOTS))
    assert got.shape == q.shape and got.dtype == q.dtype
    # A query at slot ≥ capacity is an empty token: its output is unspecified, so it is not compared.
    valid = np.less(QUERY_SLOTS, s)
    want = attend_reference(q, k, v, QUERY_SLOTS)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=1e-5, atol=1e-5)


def _window_slots(seed: int, b: int, t: int) -> np.ndarray:
    """The slots `step.token_slots` gives a window from an empty cache: in order, every ~10th token empty."""
    valid = np.random.default_rng(seed).random((b, t)) > 0.1
    return np.where(valid, np.cumsum(valid, axis=1) - 1, t).astype(np.int32)


@pytest.mark.parametrize("block", [1, 7, 16, 64])
def test_window_attention_in_causal_blocks_matches_the_whole_window(block):
    """A window from an empty cache attended in query blocks, each against the keys up to its own end,
    gives every real token the whole-window result; one block (0 or >= T) is `xla_attend` itself. The
    control: on a cache that already holds earlier slots (serving) the blocks would cut keys queries see,
    which is why only `step.window_forward` asks for it."""
    from interaction_jax.model.kernels import xla_attend, xla_window_attend

    b, t = 2, 40
    q, k, v = randn(0, b, t, 4, 8), randn(1, b, t, 2, 8), randn(2, b, t, 2, 8)
    slots = _window_slots(3, b, t)
    real = slots < t
    # jitted: run eagerly, each of the blocks' differently shaped ops would compile on its own
    attend_whole, attend_blocks = jax.jit(xla_attend), jax.jit(xla_window_attend, static_argnums=4)
    want = np.asarray(attend_whole(q, k, v, jnp.asarray(slots)))
    got = np.asarray(attend_blocks(q, k, v, jnp.asarray(slots), block))
    np.testing.assert_allclose(got[real], want[real], rtol=1e-6, atol=1e-6)
    for whole in (0, t):
        np.testing.assert_array_equal(attend_blocks(q, k, v, jnp.asarray(slots), whole), want)
    if block < t:  # a query at slot index + 10 (a cache with 10 slots before the window) sees past its block
        later = jnp.asarray(np.minimum(slots + 10, t - 1))
        cut = np.asarray(attend_blocks(q, k, v, later, block))
        assert not np.allclose(cut, np.asarray(attend_whole(q, k, v, later)), atol=1e-3)


MASK_SLOTS = np.array([[0, 3, 1, 2], [4, 0, 2, 1]], np.int32)


def _poison_future(a, fill_value):
    """a [B, S, ...] with every slot after the row's largest query slot set to `fill_value`."""
    hidden = np.arange(a.shape[1])[None, :] > MASK_SLOTS.max(axis=1)[:, None]
    return jnp.where(jnp.asarray(hidden)[:, :, None, None], jnp.float32(fill_value), a)


@pytest.mark.parametrize(
    "fill_k, fill_v",
    [(np.nan, None), (np.inf, None), (-np.inf, None), (1e30, 1e30), (-3e4, 5e20), (None, -1e30)],
)
def test_attend_masked_slots_have_no_influence(fill_k, fill_v):
    """Keys at masked slots may be anything (NaN/inf included), values any finite number."""
    q, k, v = randn(0, 2, 4, 4, 8), randn(1, 2, 9, 2, 8), randn(2, 2, 9, 2, 8)
    want = attend(q, k, v, jnp.asarray(MASK_SLOTS))
    k2 = k if fill_k is None else _poison_future(k, fill_k)
    v2 = v if fill_v is None else _poison_future(v, fill_v)
    got = attend(q, k2, v2, jnp.asarray(MASK_SLOTS))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fill_v", [np.nan, np.inf])
def test_attend_nonfinite_values_in_masked_slots_do_not_leak(fill_v):
    q, k, v = randn(0, 2, 4, 4, 8), randn(1, 2, 9, 2, 8), randn(2, 2, 9, 2, 8)
    want = attend(q, k, v, jnp.asarray(MASK_SLOTS))
    got = attend(q, k, _poison_future(v, fill_v), jnp.asarray(MASK_SLOTS))
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------------
# cache


def test_cache_write_drops_slots_past_capacity():
    kv = -jnp.arange(2 * 5 * 1 * 2, dtype=jnp.float32).reshape(2, 5, 1, 2)
    new = randn(0, 2, 3, 1, 2)
    slots = jnp.array([[4, 0, 5], [9, 2, 3]])  # 5 and 9 are ≥ capacity 5
    got = np.asarray(kv_cache.write(kv, new, slots))
    want = np.asarray(kv).copy()
    want[0, 4], want[0, 0] = new[0, 0], new[0, 1]
    want[1, 2], want[1, 3] = new[1, 1], new[1, 2]
    np.testing.assert_array_equal(got, want)
    # The cache's dtype wins (a bfloat16 cache takes float32 keys).
    assert kv_cache.write(kv.astype(jnp.bfloat16), new, slots).dtype == jnp.bfloat16


def test_negative_slots_and_indices_are_dropped():
    kv = jnp.zeros((1, 3, 1, 1))
    got = kv_cache.write(kv, jnp.ones((1, 1, 1, 1)), jnp.array([[-1]]))
    x = embed.scatter_into(jnp.zeros((1, 3, 2)), jnp.ones((1, 1, 2)), jnp.array([[-1]]))
    np.testing.assert_array_equal(got, kv)
    np.testing.assert_array_equal(x, jnp.zeros((1, 3, 2)))


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_init_cache_shapes_dtypes_and_distinct_buffers(dtype):
    m = config_lib.override(TINY, ["model.n_layers=3", "model.n_kv_heads=1"]).model
    cache = kv_cache.init_cache(m, batch=2, max_len=7, dtype=dtype)
    want_dtype = jnp.dtype(dtype or m.dtype)
    assert len(cache["layers"]) == 3
    for layer in cache["layers"]:
        assert set(layer) == {"k", "v"}
        for a in layer.values():
            assert a.shape == (2, 7, 1, m.head_dim) and a.dtype == want_dtype
            assert not np.any(np.asarray(a, np.float32))
    for name in ("length", "chunk"):
        assert cache[name].shape == (2,) and cache[name].dtype == jnp.int32
        assert not np.any(cache[name])
    assert cache["length"] is not cache["chunk"]
    leaves = jax.tree_util.tree_leaves(cache)
    assert len({id(a) for a in leaves}) == len(leaves)  # no leaf shares another's array…
    assert len({a.unsafe_buffer_pointer() for a in leaves}) == len(leaves)  # …or its buffer (donation)
    assert kv_cache.capacity(cache) == 7
    axes = kv_cache.cache_logical_axes(m)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str | None) for a in x)
    assert jax.tree_util.tree_structure(axes, is_leaf=is_axes) == jax.tree_util.tree_structure(cache)


@pytest.mark.parametrize("overrides", [[], ["model.dtype=bfloat16", "model.n_layers=2", "model.n_kv_heads=4"]])
def test_cache_bytes_matches_init_cache(overrides):
    m = config_lib.override(TINY, overrides).model
    cache = kv_cache.init_cache(m, batch=3, max_len=11)
    layer_bytes = sum(a.nbytes for layer in cache["layers"] for a in layer.values())
    assert kv_cache.cache_bytes(m, 3, 11) == layer_bytes
    # The per-row int32 counters (2 × 4 × B bytes) are the only other leaves.
    total = sum(a.nbytes for a in jax.tree_util.tree_leaves(cache))
    assert total - layer_bytes == 2 * 4 * 3


# ------------------------------------------------------------------------------------------------
# heads.sample_text


@jax.jit
def _sample_many(logits, temperature, top_p, keys):
    return jax.vmap(lambda r: heads.sample_text(logits, temperature, top_p, r))(keys)


KEYS = jax.random.split(jax.random.key(7), 4000)


def test_sample_text_greedy_at_temperature_zero():
    logits = randn(0, 16, 50, scale=3.0)
    got = _sample_many(logits, jnp.float32(0.0), jnp.float32(0.9), KEYS[:3])
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.broadcast_to(np.argmax(logits, -1), got.shape))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0, 50.0])
def test_sample_text_tiny_top_p_is_greedy(temperature):
    logits = randn(1, 16, 50)
    draws = _sample_many(logits, jnp.float32(temperature), jnp.float32(1e-6), KEYS[:8])
    np.testing.assert_array_equal(draws, np.broadcast_to(np.argmax(logits, -1), draws.shape))
    if temperature >= 1.0:  # the same call with top_p = 1 does sample other tokens
        others = _sample_many(logits, jnp.float32(temperature), jnp.float32(1.0), KEYS[:8])
        assert np.any(np.asarray(others) != np.argmax(logits, -1))


def _freq(logits, temperature, top_p, n=4000):
    draws = np.asarray(_sample_many(jnp.asarray(logits)[None], jnp.float32(temperature), jnp.float32(top_p), KEYS[:n]))
    return np.bincount(draws[:, 0], minlength=len(logits)) / n


def test_sample_text_matches_softmax():
    logits = np.array([1.0, 0.2, -0.5, 2.0, 0.0, -2.0], np.float32)
    np.testing.assert_allclose(_freq(logits, 1.0, 1.0), jax.nn.softmax(logits), atol=0.03)
    # Temperature 2 flattens the distribution to softmax(logits / 2).
    np.testing.assert_allclose(_freq(logits, 2.0, 1.0), jax.nn.softmax(logits / 2.0), atol=0.03)


def test_sample_text_top_p_keeps_smallest_prefix():
    probs = np.array([0.15, 0.30, 0.10, 0.25, 0.20])  # sorted: 0.30 (id 1), 0.25 (id 3) → 0.55 ≥ 0.5
    logits = np.log(probs).astype(np.float32)
    freq = _freq(logits, 1.0, 0.5)
    assert set(np.flatnonzero(freq)) == {1, 3}
    assert abs(freq[1] - 0.30 / 0.55) < 0.03  # renormalised within the nucleus
    # Just below the top token's mass keeps only it; just above keeps two.
    assert set(np.flatnonzero(_freq(logits, 1.0, 0.29, 500))) == {1}
    assert set(np.flatnonzero(_freq(logits, 1.0, 0.31, 500))) == {1, 3}


# ------------------------------------------------------------------------------------------------
# heads.euler_sample


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _euler(velocity, shape, steps, temperature, rng):
    return heads.euler_sample(velocity, shape, steps, temperature, rng)


@functools.partial(jax.jit, static_argnums=0)
def _noise(shape, rng):
    return jax.random.normal(rng, shape, jnp.float32)


C_SHAPE = (3, 5)
# Multiples of 1/4: c/8 and all its partial sums are exact in float32.
CONSTANT = jnp.asarray(np.random.default_rng(0).integers(-8, 8, C_SHAPE) / 4.0, jnp.float32)


def _constant_field(x, t):
    return jnp.broadcast_to(CONSTANT, x.shape)


def test_euler_sample_constant_field():
    rng = jax.random.key(11)
    x0 = _noise(C_SHAPE, rng)
    for temperature in (0.7, 1.0, 1.3):
        got = _euler(_constant_field, C_SHAPE, 8, jnp.float32(temperature), rng)
        np.testing.assert_allclose(got, temperature * x0 + CONSTANT, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_euler(_constant_field, C_SHAPE, 8, jnp.float32(0.0), rng), CONSTANT)


def _time_field(x, t):
    return jnp.broadcast_to(t[:, None], x.shape)


def test_euler_sample_time_grid():
    """The field is evaluated at t = 0, 1/n, …, (n − 1)/n with one t per row."""
    seen = _euler(_time_field, (2, 1), 4, jnp.float32(0.0), jax.random.key(0))
    np.testing.assert_allclose(seen, (0 + 0.25 + 0.5 + 0.75) / 4, rtol=1e-6)


X1 = randn(5, 4, 6, scale=2.0)


def _straight_field(x, t):
    return (X1 - x) / (1.0 - jnp.minimum(t, 1.0 - 1e-6))[:, None]


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_sample_straight_line_field_lands_on_target(steps):
    got = _euler(_straight_field, X1.shape, steps, jnp.float32(1.0), jax.random.key(6))
    np.testing.assert_allclose(got, X1, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# heads.flow_matching_loss


def _fm_losses(target, mask, rng):
    """The loss for three fields at once (one compile): [oracle, zero, 0.5·x + t]."""
    fields = (
        lambda x_t, t: (target - x_t) / jnp.maximum(1.0 - t, 1e-6)[:, None],
        lambda x_t, t: jnp.zeros_like(x_t),
        lambda x_t, t: 0.5 * x_t + t[:, None],
    )
    return jnp.stack([heads.flow_matching_loss(v, target, mask, rng) for v in fields])


_fm_one = jax.jit(_fm_losses)
_fm_many = jax.jit(jax.vmap(_fm_losses, in_axes=(None, None, 0)))

FM_TARGET = randn(0, 16, 10) + 1.5
FM_MASK = jnp.arange(16) % 3 != 0
FM_KEYS = jax.random.split(jax.random.key(3), 400)


def test_flow_matching_loss_oracle_is_zero():
    oracle = np.asarray(_fm_many(FM_TARGET, jnp.ones((16,), bool), FM_KEYS)[:, 0])
    assert np.all(oracle >= 0.0) and np.all(oracle <= 1e-6)


def test_flow_matching_loss_zero_field():
    rng = FM_KEYS[0]
    loss = _fm_one(FM_TARGET, FM_MASK, rng)[1]
    # Exactly E_f (x1 − x0)² over the counted rows, with the x0 drawn from the first split key.
    x0 = _noise(FM_TARGET.shape, jax.random.split(rng)[0])
    per_row = np.mean(np.square(np.asarray(FM_TARGET, np.float64) - np.asarray(x0, np.float64)), axis=-1)
    np.testing.assert_allclose(loss, per_row[np.asarray(FM_MASK)].mean(), rtol=1e-5)
    # On average over the noise: E‖x1 − x0‖² / F = ‖x1‖² / F + 1.
    losses = _fm_many(FM_TARGET, FM_MASK, FM_KEYS)[:, 1]
    x1 = np.asarray(FM_TARGET, np.float64)[np.asarray(FM_MASK)]
    expected = np.mean(np.sum(x1**2, -1)) / x1.shape[1] + 1.0
    assert float(loss) > 0
    assert abs(float(jnp.mean(losses)) - expected) / expected < 0.03


def test_flow_matching_loss_ignores_masked_entries():
    rng = FM_KEYS[1]
    losses = _fm_one(FM_TARGET, FM_MASK, rng)
    masked = np.flatnonzero(~np.asarray(FM_MASK))
    changed = FM_TARGET.at[masked].set(100.0)
    np.testing.assert_array_equal(_fm_one(changed, FM_MASK, rng)[1:], losses[1:])
    # A counted entry does change it.
    assert np.all(np.asarray(_fm_one(FM_TARGET.at[1].set(100.0), FM_MASK, rng)[1:] != losses[1:]))
    # A float mask works like the bool one; nothing counted gives 0, not NaN.
    np.testing.assert_array_equal(_fm_one(FM_TARGET, FM_MASK.astype(jnp.float32), rng), losses)
    np.testing.assert_array_equal(_fm_one(FM_TARGET, jnp.zeros(16, bool), rng), 0.0)


# ------------------------------------------------------------------------------------------------
# heads.FlowHead

FLOW_HEAD = heads.FlowHead(out_dim=10, hidden=32, blocks=2)
FH_COND, FH_X, FH_T = randn(0, 5, 24), randn(1, 5, 10), jnp.asarray(np.linspace(0.0, 0.95, 5), jnp.float32)


def test_flow_head_zero_at_init():
    params = nn.unbox(jax.jit(FLOW_HEAD.init)(jax.random.key(1), FH_COND, FH_X, FH_T))["params"]
    out = jax.jit(FLOW_HEAD.apply)({"params": params}, FH_COND, FH_X, FH_T)
    assert out.shape == (5, 10) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)
    for name in ("mod0", "mod1", "mod_out", "out"):  # gates / modulation and the output layer
        assert not np.any(params[name]["kernel"]) and not np.any(params[name]["bias"])
    for name in ("fc0a", "fc1b", "x_in", "cond_in", "time_in"):
        assert np.any(params[name]["kernel"])


def test_flow_head_rows_are_independent():
    params = module_params(FLOW_HEAD, FH_COND, FH_X, FH_T, seed=2)
    apply = jax.jit(lambda c, x, t: FLOW_HEAD.apply({"params": params}, c, x, t))
    batched = apply(FH_COND, FH_X, FH_T)
    scale = float(jnp.max(jnp.abs(batched)))
    assert scale > 1e-2
    rows = jnp.concatenate([apply(FH_COND[i : i + 1], FH_X[i : i + 1], FH_T[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(batched, rows, rtol=1e-6, atol=1e-6 * max(1.0, scale))
    # Same batch shape, other rows changed: bit-identical.
    mixed = apply(FH_COND.at[1:].set(-FH_COND[1:]), FH_X.at[1:].set(0.0), FH_T.at[1:].set(0.9))
    np.testing.assert_array_equal(mixed[0], batched[0])
    # The conditioning and the time matter.
    assert not np.allclose(apply(FH_COND[::-1], FH_X, FH_T)[0], batched[0])
    assert not np.allclose(apply(FH_COND, FH_X, FH_T[::-1])[0], batched[0])


# ------------------------------------------------------------------------------------------------
# embed.HMLPStem, embed.DMelBag


def _patches(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (*shape, 40, 40, 3)), jnp.uint8)


STEM = embed.HMLPStem(d_model=32)
STEM_PATCHES = _patches(0, 2, 3)


@pytest.fixture(scope="module")
def stem_params():
    return module_params(STEM, STEM_PATCHES, seed=4, scale=0.2)


def test_hmlp_stem_has_no_batch_stats():
    variables = jax.eval_shape(STEM.init, jax.random.key(0), STEM_PATCHES)
    assert set(variables) == {"params"}  # LayerNorm only: no batch_stats collection
    norms = [k for k in variables["params"] if k.startswith("norm")]
    assert norms == ["norm1", "norm2", "norm3"]


def test_hmlp_stem_batch_invariance(stem_params):
    apply = jax.jit(lambda p: STEM.apply({"params": stem_params}, p))
    out = apply(STEM_PATCHES)
    assert out.shape == (2, 3, 32)
    # Same batch shape, other patches changed: bit-identical (a BatchNorm would mix them).
    others = STEM_PATCHES.at[1].set(255 - STEM_PATCHES[1]).at[0, 1:].set(STEM_PATCHES[1, :2])
    np.testing.assert_array_equal(apply(others)[0, 0], out[0, 0])
    # Alone vs in the batch: another matmul shape may reorder float32 sums (the `fast` alignment is
    # not batch-invariant bit for bit), so ~1e-6-relative noise is allowed, nothing more.
    np.testing.assert_allclose(apply(STEM_PATCHES.reshape(6, 40, 40, 3)).reshape(2, 3, 32), out, rtol=1e-5, atol=1e-5)
    for i, j in ((0, 0), (1, 2)):
        np.testing.assert_allclose(apply(STEM_PATCHES[i, j][None])[0], out[i, j], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[0, 0], out[0, 1], atol=1e-2)


def test_hmlp_stem_matches_strided_conv_reference(stem_params):
    """Convolutions with kernel = stride 10, 2, 2: first-stage cell (r, c) sees pixels (10r + i, 10c + j)."""
    got = np.asarray(jax.jit(STEM.apply)({"params": stem_params}, STEM_PATCHES[0, :1])[0], np.float64)
    p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in stem_params.items()}
    gelu = lambda z: np.asarray(jax.nn.gelu(jnp.asarray(z, jnp.float32)), np.float64)

    def ln(z, name):
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-6) * p[name]["scale"] + p[name]["bias"]

    def conv(z, k, name):  # [H, W, C] → [H/k, W/k, C'], flattening each k×k cell in (i, j, c) order
        h, w, c = z.shape
        cells = z.reshape(h // k, k, w // k, k, c).transpose(0, 2, 1, 3, 4).reshape(h // k, w // k, k * k * c)
        return cells @ p[name]["kernel"] + p[name]["bias"]

    x = np.asarray(STEM_PATCHES[0, 0], np.float64) / 255.0 - 0.5
    x = gelu(ln(conv(x, 10, "proj1"), "norm1"))
    x = gelu(ln(conv(x, 2, "proj2"), "norm2"))
    want = ln(conv(x, 2, "proj3"), "norm3").reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dmel_bag_is_explicit_sum():
    s = config_lib.override(TINY, ["stream.n_mels=6", "stream.dmel_levels=5", "stream.stack=2"]).stream
    bag = embed.DMelBag(d_model=8, stream=s)
    levels = np.random.default_rng(0).integers(0, s.dmel_levels, (2, 3, s.stack, s.n_mels)).astype(np.uint8)
    params = module_params(bag, jnp.asarray(levels), seed=1)
    table = np.asarray(params["table"], np.float64)
    assert table.shape == (s.stack, s.n_mels, s.dmel_levels, 8)
    got = jax.jit(bag.apply)({"params": params}, jnp.asarray(levels))
    want = np.zeros((2, 3, 8))
    for b in range(2):
        for n in range(3):
            for i in range(s.stack):
                for c in range(s.n_mels):
                    want[b, n] += table[i, c, levels[b, n, i, c]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# embed.scatter_into, embed.Embedder


def test_scatter_into_adds_and_drops_out_of_range():
    x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    values = jnp.ones((2, 3, 3)) * jnp.array([1.0, 10.0, 100.0])[None, :, None]
    index = jnp.array([[0, 4, 0], [3, 2, 7]])  # a repeated index adds twice; 4 and 7 are ≥ T
    got = np.asarray(embed.scatter_into(x, values, index))
    want = np.asarray(x).copy()
    want[0, 0] += 101.0
    want[1, 3] += 1.0
    want[1, 2] += 10.0
    np.testing.assert_array_equal(got, want)


EMBED_CFG = config_lib.override(TINY, ["model.d_model=32"])
T = 7


def _hand_batch():
    s = EMBED_CFG.stream
    rng = np.random.default_rng(0)
    kind = np.array(
        [
            [Kind.AUDIO_IN, Kind.AUDIO_IN, Kind.VIDEO_IN, Kind.TEXT_IN, Kind.TEXT_OUT, Kind.AUDIO_OUT, Kind.PAD],
            [Kind.TEXT_IN, Kind.VIDEO_IN, Kind.VIDEO_IN, Kind.AUDIO_IN, Kind.TEXT_OUT, Kind.TEXT_IN, Kind.AUDIO_OUT],
        ],
        np.int32,
    )
    batch = {
        "kind": kind,
        "position": np.broadcast_to(np.arange(T, dtype=np.int32), (2, T)),
        "text": rng.integers(0, tokenizer.NUM_IDS, (2, T)).astype(np.int32),
        "audio": rng.integers(0, s.dmel_levels, (2, 3, s.stack, s.n_mels)).astype(np.uint8),
        "audio_index": np.array([[0, 1, 5], [3, 6, T]], np.int32),
        "patches": np.asarray(_patches(1, 2, 2)),
        "patch_index": np.array([[2, T], [1, 2]], np.int32),
        "patch_cell": rng.integers(0, s.patches_per_frame, (2, 2)).astype(np.int32),
    }
    return {k: jnp.asarray(v) for k, v in batch.items()}


EMBEDDER = embed.Embedder(EMBED_CFG.model, EMBED_CFG.stream)


@pytest.fixture(scope="module")
def embedder():
    params = module_params(EMBEDDER, _hand_batch(), seed=3, scale=0.5)
    return jax.jit(lambda b: EMBEDDER.apply({"params": params}, b)), params


def _with_extra_entries(batch, audio_index, patch_index):
    """`batch` with two more audio entries and one more patch entry at the given indices."""
    return batch | {
        "audio": jnp.concatenate([batch["audio"], 15 - batch["audio"][:, :2]], axis=1),
        "audio_index": jnp.concatenate([batch["audio_index"], jnp.asarray(audio_index, jnp.int32)], axis=1),
        "patches": jnp.concatenate([batch["patches"], 255 - batch["patches"][:, :1]], axis=1),
        "patch_index": jnp.concatenate([batch["patch_index"], jnp.asarray(patch_index, jnp.int32)], axis=1),
        "patch_cell": jnp.concatenate([batch["patch_cell"], jnp.array([[1], [0]], jnp.int32)], axis=1),
    }


def test_embedder_drops_entries_past_the_sequence(embedder):
    apply, _ = embedder
    batch = _hand_batch()
    out = apply(batch)
    assert out.shape == (2, T, 32)
    # Entries pointing at T, T + 3 or far past the end: as if they were not there (up to the float
    # reordering of a differently shaped hMLP matmul)…
    past = _with_extra_entries(batch, [[T, T + 3], [1000, T]], [[T + 1], [T]])
    out_past = apply(past)
    np.testing.assert_allclose(out_past, out, rtol=1e-5, atol=1e-5)
    # …and bit-identical whatever they hold, at the same shapes.
    other = past | {"audio": past["audio"].at[:, 3:].set(0), "patches": past["patches"].at[:, 2:].set(7)}
    np.testing.assert_array_equal(apply(other), out_past)
    # An in-range extra entry does change its own token, and only that one.
    moved = apply(_with_extra_entries(batch, [[T, T], [0, T]], [[T], [T]]))
    diff = np.abs(np.asarray(moved - out_past)).max(-1)
    assert diff[1, 0] > 1e-3
    diff[1, 0] = 0
    assert diff.max() <= 1e-5


def test_embedder_text_only_at_text_kinds(embedder):
    apply, params = embedder
    batch = _hand_batch()
    out = apply(batch)
    kind = np.asarray(batch["kind"])
    is_text = (kind == Kind.TEXT_IN) | (kind == Kind.TEXT_OUT)
    changed = batch | {"text": jnp.where(jnp.asarray(is_text), batch["text"], (batch["text"] + 17) % 300)}
    np.testing.assert_array_equal(apply(changed), out)
    # At a text token, the embedding is text_table[id] + kind_table[kind] (no entry lands there).
    want = params["text"][batch["text"][0, 3]] + params["kind"][Kind.TEXT_IN]
    np.testing.assert_allclose(out[0, 3], want, rtol=1e-6, atol=1e-6)
    # Changing the text of a text token does change it.
    assert not np.allclose(apply(batch | {"text": batch["text"].at[0, 4].add(1)})[0, 4], out[0, 4])
    # A PAD token with no entries is just the PAD kind vector.
    np.testing.assert_allclose(out[0, 6], params["kind"][Kind.PAD], atol=1e-6)


def test_an_embedder_that_does_not_hear_its_own_voice_embeds_audio_out_as_its_kind(embedder):
    """`model.hear_own_voice` off (the default): an AUDIO_OUT token is its kind vector whatever dMel it
    carries, while an AUDIO_IN token still hears its dMel; the control is an embedder that hears its own
    voice, which the same change moves at those tokens and nowhere else."""
    _, params = embedder

    def embedder_hearing(on: bool):
        cfg = config_lib.override(EMBED_CFG, [f"model.hear_own_voice={str(on).lower()}"])
        module = embed.Embedder(cfg.model, cfg.stream)
        return jax.jit(lambda b: module.apply({"params": params}, b))

    deaf, hearing = embedder_hearing(False), embedder_hearing(True)
    assert not EMBED_CFG.model.hear_own_voice
    batch = _hand_batch()
    # entry 2 of row 0 and entry 1 of row 1 are at AUDIO_OUT tokens (5 and 6), entry 0 of each at AUDIO_IN
    own_voice = batch | {"audio": batch["audio"].at[0, 2].set(15 - batch["audio"][0, 2]).at[1, 1].set(0)}
    heard = batch | {"audio": batch["audio"].at[0, 0].set(15 - batch["audio"][0, 0])}
    out = np.asarray(deaf(batch))
    np.testing.assert_array_equal(deaf(own_voice), out)
    np.testing.assert_allclose(out[0, 5], params["kind"][Kind.AUDIO_OUT], atol=1e-6)
    np.testing.assert_allclose(out[1, 6], params["kind"][Kind.AUDIO_OUT], atol=1e-6)
    assert np.abs(np.asarray(deaf(heard))[0, 0] - out[0, 0]).max() > 1e-3
    moved = np.abs(np.asarray(hearing(own_voice)) - np.asarray(hearing(batch))).max(-1)
    assert moved[0, 5] > 1e-3 and moved[1, 6] > 1e-3
    moved[0, 5] = moved[1, 6] = 0
    assert moved.max() == 0


def test_embedder_with_dummy_batch(embedder):
    """`step.dummy_batch` is well formed for the embedder; its text tokens embed as text + TEXT_IN."""
    apply, params = embedder
    batch = step_lib.dummy_batch(EMBED_CFG, batch=2, length=T)
    out = apply(batch)
    assert out.shape == (2, T, 32)
    # Every dummy entry is at index 0: tokens 1… are text id 0 + the TEXT_IN kind.
    want = params["text"][0] + params["kind"][Kind.TEXT_IN]
    np.testing.assert_allclose(out[:, 1:], np.broadcast_to(want, (2, T - 1, 32)), atol=1e-6)
    assert not np.allclose(out[:, 0], want)


# ------------------------------------------------------------------------------------------------
# step.text_logits, remat, dtype, dense + shared-expert MoE


def model_params(cfg, seed=0):
    """Random model parameters shaped like `init_params` (without compiling the initialisers)."""
    return fill(jax.eval_shape(functools.partial(step_lib.init_params, cfg), jax.random.key(0)), seed, 0.1)


@pytest.fixture(scope="module")
def small_params():
    return model_params(SMALL)


@pytest.fixture(scope="module")
def small_batch():
    return jax.tree_util.tree_map(jnp.asarray, random_batch(SMALL.stream, num_chunks=5, batch=1))


def _loss(cfg):
    return jax.jit(lambda p, b: loss_lib.loss_fn(p, b, jax.random.key(5), cfg=cfg))


def _loss_and_grads(cfg):
    """((loss, metrics), grads) of the loss, one compile."""
    return jax.jit(jax.value_and_grad(lambda p, b: loss_lib.loss_fn(p, b, jax.random.key(5), cfg=cfg), has_aux=True))


@pytest.fixture(scope="module")
def f32_loss_grads(small_params, small_batch):
    return _loss_and_grads(SMALL)(small_params, small_batch)


def test_text_logits_never_pick_ids_past_the_tokenizer(small_params):
    # Make the padded tail of the head as attractive as possible.
    kernel = small_params["text_head"]["kernel"]
    params = small_params | {"text_head": {"kernel": kernel.at[:, tokenizer.NUM_IDS :].set(10.0)}}
    hidden = jnp.abs(randn(1, 3, 5, SMALL.model.d_model, scale=4.0)) + 0.5  # positive: the tail scores high

    @jax.jit
    def run(params, hidden):
        logits = step_lib.text_logits(params, hidden, cfg=SMALL)
        flat = logits.reshape(-1, logits.shape[-1])
        ids = [heads.sample_text(flat, jnp.float32(t), jnp.float32(1.0), jax.random.key(2)) for t in (0.0, 1.0, 5.0)]
        return logits, jnp.stack(ids)

    logits, ids = run(params, hidden)
    assert logits.shape == (3, 5, SMALL.model.vocab_size) and logits.dtype == jnp.float32
    assert np.all(np.asarray(jnp.argmax(logits, -1)) < tokenizer.NUM_IDS)
    assert np.all(np.isfinite(logits))
    assert np.all(np.asarray(ids) < tokenizer.NUM_IDS)  # the sampler never draws them either
    # Without the mask the tail would win (the test can fail).
    raw = jax.jit(lambda p, h: h @ p["text_head"]["kernel"])(params, hidden)
    assert np.all(np.asarray(jnp.argmax(raw, -1)) >= tokenizer.NUM_IDS)


def test_remat_block_gives_same_loss_and_grads(small_params, small_batch, f32_loss_grads):
    (loss, _), grads = f32_loss_grads
    remat = config_lib.override(SMALL, ["model.remat=block"])
    (loss_r, _), grads_r = _loss_and_grads(remat)(small_params, small_batch)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert abs(float(loss_r) - float(loss)) <= 1e-6 * abs(float(loss))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(grads_r)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g_r = functools.reduce(lambda t, k: t[k.key], path, grads_r)
        assert rel_err(g_r, g) <= 1e-6 or float(jnp.max(jnp.abs(g))) == 0.0, jax.tree_util.keystr(path)
    assert float(jnp.max(jnp.abs(grads["block0"]["attn"]["wq"]))) > 0


def test_bfloat16_loss_terms_and_gradients_close_to_float32(small_params, small_batch):
    """bfloat16 compute is the float32 model to bfloat16 rounding. Measured: every loss term within
    3e-4 relative, the gradient within 1.2% (norm of the difference); the bounds are 3–4× that. For
    scale: other random parameters move the loss by 1.7%, so a loss bound of a few % would prove nothing.

    On a model that hears its own voice. With `model.hear_own_voice` off, the AUDIO_OUT tokens all embed as
    one vector, their top-2 routing over 4 experts comes near ties, and bfloat16 flips some of them:
    gradients 11.5% apart, text CE 1.7e-3; with every expert taken (top_k 4) 1.3% and 5e-5 again. What is
    checked here is the arithmetic, not which expert a tie goes to."""
    hearing = config_lib.override(SMALL, ["model.hear_own_voice=true"])
    (loss32, metrics32), grads32 = _loss_and_grads(hearing)(small_params, small_batch)
    (loss16, metrics16), grads16 = _loss_and_grads(config_lib.override(hearing, ["model.dtype=bfloat16"]))(
        small_params, small_batch
    )
    assert loss16.dtype == jnp.float32
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(metrics16))
    assert abs(float(loss16) - float(loss32)) <= 1e-3 * abs(float(loss32))
    for term in ("text_ce", "flow", "router_z", "load_balance"):
        assert abs(float(metrics16[term]) - float(metrics32[term])) <= 1e-3 * abs(float(metrics32[term])), term
    g32, g16 = (
        np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in jax.tree.leaves(t)]) for t in (grads32, grads16)
    )
    assert np.linalg.norm(g16 - g32) <= 0.05 * np.linalg.norm(g32)


def test_dense_every_with_shared_expert_and_gather_dispatch(small_batch):
    cfg = config_lib.override(
        SMALL, ["model.n_layers=4", "model.dense_every=2", "model.shared_expert_mlp=64", "model.moe_dispatch=gather"]
    )
    params = model_params(cfg)
    for i in (1, 3):
        assert "mlp" in params[f"block{i}"] and "moe" not in params[f"block{i}"]
        assert params[f"block{i}"]["mlp"]["w_gate"].shape == (64, cfg.model.dense_mlp)
    for i in (0, 2):
        assert "moe" in params[f"block{i}"] and "mlp" not in params[f"block{i}"]
        assert params[f"block{i}"]["moe"]["shared"]["w_up"].shape == (64, 64)
    loss, metrics = _loss(cfg)(params, small_batch)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert float(metrics["load_balance"]) > 0  # the two MoE layers still report their aux losses
