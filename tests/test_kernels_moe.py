"""MoE expert FFN kernels: numerics against the dense all-experts oracle, and bit-for-bit agreement of
`moe_gemv` and `moe_gmm` on every token, whatever the other tokens and their order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.moe import api, reference
from pallas_kernels.testing import (
    CPU_IMPLEMENTATIONS,
    PALLAS_CPU,
    assert_bitwise,
    device_params,
)

DEVICE = device_params()
CONFIG = api.MoEConfig(block_rows=8, block_k=64)  # two reduction blocks of D = F = 128
# Mosaic tiles blocks by (8, 128): a 64-wide weight block of a 128-wide array does not compile there
DEVICE_CONFIGS = {"pallas_tpu": api.MoEConfig(block_rows=8, block_k=128)}


def _config(implementation):
    return DEVICE_CONFIGS.get(implementation, CONFIG)


# Each test runs its kernel calls in one jitted program, each call at its own shapes: a program is
# compiled once, where eager calls compile every op on its own, and the TPU interpreter's programs
# hold host callbacks, so the persistent cache does not keep them: each program costs a compile.


D, F = 128, 128
# The oracle, jitted: called eagerly, each of its ops is compiled on its own.
_dense_reference = jax.jit(reference.dense_reference)


def _case(seed: int, t: int, e: int, k: int, ids=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, D)).astype(np.float32)
    w_gate, w_up = ((0.1 * rng.standard_normal((e, D, F))).astype(np.float32) for _ in range(2))
    w_down = (0.1 * rng.standard_normal((e, F, D))).astype(np.float32)
    if ids is None:
        ids = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    weights = rng.random((t, k)).astype(np.float32)
    return x, ids, weights, w_gate, w_up, w_down


# (E, k, routing): 4–64 experts, top-1/2/8, everything to one expert, most experts without tokens.
CASES = [(4, 1, "random"), (16, 2, "random"), (64, 8, "random"), (8, 2, "one expert"), (64, 2, "few experts")]


def _routing(name: str, t: int, e: int, k: int):
    if name == "one expert":  # every token's first slot on expert 3, the other slot on expert 5
        return np.tile(np.array([3, 5][:k], np.int32), (t, 1))
    if name == "few experts":
        return np.stack([np.array([1, 2]) if i % 2 else np.array([2, 1]) for i in range(t)]).astype(np.int32)
    return None


@pytest.mark.parametrize("implementation", [*CPU_IMPLEMENTATIONS, *DEVICE])
@pytest.mark.parametrize("e,k,routing", CASES)
def test_moe_kernels_match_the_dense_reference(implementation, e, k, routing):
    t = 12
    args = _case(e * 10 + k, t, e, k, _routing(routing, t, e, k))
    want = np.asarray(_dense_reference(*args))
    ops = (api.moe_gemv, api.moe_gmm)
    kw = {"config": _config(implementation), "implementation": implementation}
    both = jax.jit(lambda *a: [op(*a, **kw) for op in ops])  # one program: one compile
    for op, got in zip(ops, both(*args), strict=True):
        got = np.asarray(got)
        assert got.shape == (t, D) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=op.__name__)


@pytest.mark.parametrize("implementation", [*PALLAS_CPU, *DEVICE])
def test_gemv_and_gmm_agree_bit_for_bit_whatever_the_batch(implementation):
    rng = np.random.default_rng(0)
    kw = {"config": _config(implementation), "implementation": implementation}

    # Each call at its own shapes, all of a trial in one jitted program (one compile, not one per call);
    # gmm of the tokens and of the tokens reversed is one kernel at one shape, run twice by `lax.map`
    # (one copy of it to compile).
    @jax.jit
    def calls(x, ids, weights, *w):
        tokens = jax.tree.map(lambda a: jnp.stack([a, a[::-1]]), (x, ids, weights))
        gmm, back = jax.lax.map(lambda a: api.moe_gmm(*a, *w, **kw), tokens)
        return api.moe_gemv(x, ids, weights, *w, **kw), gmm, back, api.moe_gemv(x[:1], ids[:1], weights[:1], *w, **kw)

    for trial in range(3):  # several random routings, token counts and expert counts
        t, e, k = int(rng.integers(1, 20)), int(rng.choice([4, 8, 16])), int(rng.choice([1, 2]))
        gemv, gmm, back, alone = (np.asarray(a) for a in calls(*_case(100 + trial, t, e, k)))
        assert_bitwise(gemv, gmm, f"trial {trial}: gemv vs gmm")
        # The tokens reversed, and the first token alone: each token's row is unchanged.
        assert_bitwise(back[::-1], gmm, f"trial {trial}: tokens reversed")
        assert_bitwise(alone, gemv[:1], f"trial {trial}: a token alone")


def test_sorted_layout_pads_each_expert_to_whole_tiles():
    ids = np.array([[2, 0], [2, 1], [2, 0]], np.int32)  # expert 0: 2, expert 1: 1, expert 2: 3 assignments
    layout = api.sorted_layout(ids, 4, block_rows=2)
    row, token_of_row, tile_expert = (np.asarray(a) for a in layout[:3])
    # groups start at rows 0 (expert 0), 2 (expert 1), 4 (expert 2: two tiles); stable within a group
    assert row.tolist() == [4, 0, 5, 2, 6, 1]
    assert token_of_row.tolist() == [0, 2, 1, -1, 0, 1, 2, -1] + [-1] * 6
    # 4 used tiles of 7; the unused ones repeat the last used expert (no new weights to fetch)
    assert int(layout.used_tiles) == 4 and tile_expert.tolist() == [0, 1, 2, 2, 2, 2, 2]


def test_sorted_layout_leaves_out_non_local_experts():
    ids = np.array([[2, -1], [5, 1], [-3, 4]], np.int32)  # 4 experts here: ids -1, 5, -3 and 4 are elsewhere
    layout = api.sorted_layout(ids, 4, block_rows=2)
    assert int(layout.used_tiles) == 2  # expert 1 (token 1) and expert 2 (token 0), one tile each
    assert np.asarray(layout.tile_expert).tolist() == [1, 2, 2, 2, 2, 2, 2]  # 3 + 4 tiles
    assert np.asarray(layout.token_of_row).tolist() == [1, -1, 0, -1] + [-1] * 10
    assert np.asarray(layout.row)[[0, 2]].tolist() == [2, 0]


@pytest.mark.parametrize("implementation", [*CPU_IMPLEMENTATIONS, *DEVICE])
def test_non_local_experts_contribute_exactly_zero(implementation):
    """Shards of E = 8 experts in two halves: ids outside [0, 4) give zero slots, and the two shards' slot
    outputs summed reproduce the one-device slots and output bit for bit."""
    t, e, k = 9, 8, 2
    x, ids, weights, w_gate, w_up, w_down = _case(7, t, e, k)
    ops = (api.moe_gemv_slots, api.moe_gmm_slots)
    kw = {"config": _config(implementation), "implementation": implementation}

    @jax.jit  # every call in one program: one compile; the two shards' calls by `lax.map` (one copy)
    def calls(x, ids, weights, w_gate, w_up, w_down):
        whole = [op(x, ids, w_gate, w_up, w_down, **kw) for op in ops]
        shards = (jnp.stack([ids, ids - 4]), *(jnp.stack([w[:4], w[4:]]) for w in (w_gate, w_up, w_down)))
        halves = [jax.lax.map(lambda a, op=op: op(x, *a, **kw), shards) for op in ops]
        combined = [api.moe_combine(h[0] + h[1], weights, implementation=implementation) for h in halves]
        return whole, halves, combined

    whole, halves, combined = jax.tree.map(np.asarray, calls(x, ids, weights, w_gate, w_up, w_down))
    want_combined = np.asarray(_dense_reference(x, ids, weights, w_gate, w_up, w_down))
    for op, want, op_halves, op_combined in zip(ops, whole, halves, combined, strict=True):
        for lo, half in zip((0, 4), op_halves, strict=True):
            elsewhere = (ids < lo) | (ids >= lo + 4)
            assert elsewhere.any() and (~elsewhere).any()
            assert (half[elsewhere] == 0).all(), op.__name__
        assert_bitwise(op_halves[0] + op_halves[1], want, op.__name__)
        np.testing.assert_allclose(op_combined, want_combined, rtol=1e-5, atol=1e-5)
    assert_bitwise(whole[0], whole[1], "gemv vs gmm slots")


def test_bad_shapes_are_refused():
    x, ids, weights, w_gate, w_up, w_down = _case(0, 4, 4, 2)
    with pytest.raises(ValueError, match=r"D \(128\) must be a multiple of block_k"):
        api.moe_gemv(x, ids, weights, w_gate, w_up, w_down, config=api.MoEConfig(block_k=96))
    with pytest.raises(ValueError, match="both be"):
        api.moe_gmm(x, ids, weights[:, :1], w_gate, w_up, w_down)


@pytest.mark.parametrize("implementation", ["interpret", *DEVICE])
def test_moe_gmm_gradients_match_the_reference(implementation):
    import jax
    import jax.numpy as jnp

    x, ids, weights, w_gate, w_up, w_down = (jnp.asarray(a) for a in _case(5, 10, 8, 2))

    def loss(op):
        def f(x, weights, wg, wu, wd):
            out = op(x, ids, weights, wg, wu, wd)
            return jnp.sum(jnp.sin(out))  # a cotangent that differs per element

        return f

    kernel = lambda *a: api.moe_gmm(*a, config=_config(implementation), implementation=implementation)
    # jitted: differentiated eagerly, every op of the forward and backward passes is compiled on its own
    got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2, 3, 4)))(x, weights, w_gate, w_up, w_down)
    want = jax.jit(jax.grad(loss(reference.dense_reference), argnums=(0, 1, 2, 3, 4)))(x, weights, w_gate, w_up, w_down)
    for name, g, w in zip(("x", "weights", "w_gate", "w_up", "w_down"), got, want, strict=True):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.abs(np.asarray(w)).max() > 0, name  # the check is not vacuous


def test_tpu_tiles_come_from_the_weights_and_keep_the_bits(monkeypatch):
    """The TPU kernel takes weight tiles chosen from D and F (whole rows of F here), never from the
    tokens, and still reduces in block_k blocks in order: its bits are those of block_k² tiles."""
    from pallas_kernels.moe import tpu

    rng = np.random.default_rng(11)
    # 3 tokens: the tiles do not depend on them, and every narrow-tiled program is 8 interpreted steps
    t, e, k, d, f = 3, 4, 2, 256, 512
    x = rng.standard_normal((t, d)).astype(np.float32)
    w_gate, w_up = ((0.1 * rng.standard_normal((e, d, f))).astype(np.float32) for _ in range(2))
    w_down = (0.1 * rng.standard_normal((e, f, d))).astype(np.float32)
    ids = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    config = api.MoEConfig(block_rows=8, block_k=128)
    kw = {"block_rows": 8, "block_k": 128, "x_dtype": np.float32, "w_dtype": np.float32, "out_dtype": np.float32}
    assert tpu.expert_tiles(d, f, n_weights=2, **kw) == (f, d)  # gate and up: [D, F] in one tile
    assert tpu.expert_tiles(f, d, n_weights=1, **kw) == (d, f)  # down: [F, D] in one tile
    args = (x, ids, w_gate, w_up, w_down)
    ops = (api.moe_gemv_slots, api.moe_gmm_slots)
    # Both kernels in one jitted program (a new function object each time: traced again after the patch).
    both = lambda: jax.jit(lambda *a: [op(*a, config=config, implementation="interpret_tpu") for op in ops])
    wide = [np.asarray(y) for y in both()(*args)]
    assert_bitwise(wide[0], wide[1], "gemv vs gmm, wide tiles")
    monkeypatch.setattr(tpu, "expert_tiles", lambda *_, block_k, **__: (block_k, block_k))
    for op, wide_y, narrow in zip(ops, wide, both()(*args), strict=True):
        assert_bitwise(wide_y, narrow, f"{op.__name__}: shape-chosen tiles vs 128 × 128")


@pytest.mark.parametrize("implementation", [*CPU_IMPLEMENTATIONS, *DEVICE])
def test_an_expert_width_off_the_block_is_zero_padded_exactly(implementation):
    """F = 200 is no multiple of block_k (`tml-small-shape` has 1440): the kernels compute as if the
    weights were zero-padded to one, bit for bit, without copying them (gemv and gmm alike)."""
    rng = np.random.default_rng(7)
    t, e, k, f = 6, 4, 2, 200
    config = _config(implementation)
    f_padded = -(-f // config.block_k) * config.block_k
    x = rng.standard_normal((t, D)).astype(np.float32)
    w_gate, w_up = ((0.1 * rng.standard_normal((e, D, f))).astype(np.float32) for _ in range(2))
    w_down = (0.1 * rng.standard_normal((e, f, D))).astype(np.float32)
    ids = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    weights = rng.random((t, k)).astype(np.float32)
    pad = ((0, 0), (0, 0), (0, f_padded - f))
    padded = (np.pad(w_gate, pad), np.pad(w_up, pad), np.pad(w_down, ((0, 0), (0, f_padded - f), (0, 0))))
    want = np.asarray(_dense_reference(x, ids, weights, w_gate, w_up, w_down))
    ops = (api.moe_gemv, api.moe_gmm)
    kw = {"config": config, "implementation": implementation}

    @jax.jit  # the four calls in one program: one compile
    def calls(x, ids, weights, w, padded):
        return [(op(x, ids, weights, *w, **kw), op(x, ids, weights, *padded, **kw)) for op in ops]

    got = {}
    for op, (y, padded_y) in zip(ops, calls(x, ids, weights, (w_gate, w_up, w_down), padded), strict=True):
        got[op] = np.asarray(y)
        np.testing.assert_allclose(got[op], want, rtol=1e-5, atol=1e-5, err_msg=op.__name__)
        assert_bitwise(got[op], padded_y, f"{op.__name__}: F {f} vs zero-padded {f_padded}")
    assert_bitwise(got[api.moe_gemv], got[api.moe_gmm], "gemv vs gmm")
