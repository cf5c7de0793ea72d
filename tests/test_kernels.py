"""The kernel library: numerics against the references, and the invariance contract, bit for bit.

On CPU every Pallas variant runs through the interpreter (`interpret_gpu`: `interpret=True`;
`interpret_tpu`: `pltpu.InterpretParams()`); under the `gpu` / `tpu` markers the same checks run
compiled. A new variant joins by adding its name to `pallas_kernels.testing`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import MatmulConfig, SplitKVConfig, bi_matmul, rms_norm, split_kv_attention
from pallas_kernels.registry import resolve
from pallas_kernels.split_kv_attention import reference as attention_reference
from pallas_kernels.testing import (
    CPU_IMPLEMENTATIONS,
    DEVICE_IMPLEMENTATIONS,
    PALLAS_CPU,
    assert_bitwise,
    device_params,
    random_cache,
)

DEVICE = device_params()
PALLAS = [*PALLAS_CPU, *DEVICE]
ALL = [*CPU_IMPLEMENTATIONS, *DEVICE]

ATTENTION = SplitKVConfig(split_size=128, block_kv=32)


def _attention_case(rng, *, b, t, hq, hkv, d, s, lengths, start):
    k, v = random_cache(rng, b, s, hkv, d, lengths)
    q = rng.standard_normal((b, t, hq, d)).astype(np.float32)
    positions = np.stack([np.arange(st, st + t) for st in start]).astype(np.int32)
    return q, k, v, positions, np.asarray(lengths, np.int32)


# ----------------------------------------------------------------------------------------------
# split_kv_attention: numerics


# (GQA ratio, head dim, T): every ratio, head dim and T of the contract appears in the first three,
# which the (slow) interpreted variants run; the reference and compiled variants run them all.
SHAPES = [(1, 64, 1), (4, 128, 7), (8, 64, 64), (4, 64, 1), (1, 128, 64), (8, 128, 7)]
ATTENTION_CASES = [
    *(pytest.param(impl, shape, id=f"{impl}-{shape}") for impl in ("reference",) for shape in SHAPES),
    *(pytest.param(impl, shape, id=f"{impl}-{shape}") for impl in PALLAS_CPU for shape in SHAPES[:3]),
    *(
        pytest.param(impl, shape, id=f"{impl}-{shape}", marks=getattr(pytest.mark, kind))
        for kind, names in DEVICE_IMPLEMENTATIONS.items()
        for impl in names
        for shape in SHAPES
    ),
]


@pytest.mark.parametrize("implementation,shape", ATTENTION_CASES)
def test_attention_matches_plain_softmax(implementation, shape):
    ratio, d, t = shape
    rng = np.random.default_rng(ratio * 100 + t)
    hkv = 2
    # Ragged lengths (one past a split boundary, one inside the first split), queries not starting at 0,
    # some queries past their row's length (they see up to the length), 3 splits.
    lengths = [300, 77]
    start = [300 - t, max(77 - t - 3, 0)]
    q, k, v, positions, kv_lengths = _attention_case(
        rng, b=2, t=t, hq=ratio * hkv, hkv=hkv, d=d, s=384, lengths=lengths, start=start
    )
    # Jitted, kernel and oracle alike: called eagerly, every jnp op of the reference's unrolled splits and
    # blocks (and of the kernels' plumbing) is compiled on its own, which took seconds per shape.
    attend = jax.jit(lambda *a: split_kv_attention(*a, config=ATTENTION, implementation=implementation))
    got = attend(q, k, v, positions, kv_lengths)
    oracle = jax.jit(lambda q, k, v, *a: attention_reference.softmax_attention(q, k, v, *a, scale=d**-0.5))
    want = oracle(q, np.nan_to_num(k), np.nan_to_num(v), positions, kv_lengths)
    assert got.shape == q.shape and got.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_a_query_that_sees_nothing_gives_zero_and_empty_rows_give_zero():
    rng = np.random.default_rng(1)
    q, k, v, positions, _ = _attention_case(rng, b=2, t=3, hq=4, hkv=2, d=64, s=256, lengths=[0, 10], start=[0, 0])
    out = split_kv_attention(q, k, v, positions, np.array([0, 10]), config=ATTENTION, implementation="interpret")
    assert not np.asarray(out[0]).any() and np.isfinite(np.asarray(out)).all()


# ----------------------------------------------------------------------------------------------
# split_kv_attention: invariance, bit for bit


@pytest.mark.parametrize("implementation", PALLAS)
def test_attention_is_invariant_to_chunking_batch_capacity_and_unwritten_slots(implementation):
    rng = np.random.default_rng(7)
    # A chunk of T = 16 (two query tiles of 8), row 0's crossing the split boundary at 256, each row's
    # last query on its last written slot, 3 splits of the cache. One KV head of 4 query heads: the
    # interpreter's cost is per grid step, and GQA grouping is covered above.
    lengths = [266, 77]
    q, k, v, positions, kv_lengths = _attention_case(
        rng, b=2, t=16, hq=4, hkv=1, d=64, s=384, lengths=lengths, start=[250, 61]
    )

    other = k.copy()
    other[1] = rng.standard_normal(other[1].shape)  # another row's cache, changed
    seen = k.copy()
    seen[0, positions[0, -1]] += 1.0  # a slot the last query of row 0 sees, changed
    grow = lambda x: jnp.concatenate([x, jnp.full_like(x, jnp.nan)], axis=1)  # capacity doubled, unwritten

    # Every call in one jitted program, each at its own shapes: a program of the TPU interpreter costs
    # a second to compile (its host callbacks keep it out of the persistent cache), one per call at
    # new shapes when they were jitted one by one. The three caches at the chunk's own shapes go through
    # one copy of the kernel (`lax.map`), compiled once.
    @jax.jit
    def attend_all(q, k, v, positions, kv_lengths, other, seen):
        def attend(q, k, v, positions, kv_lengths=kv_lengths):
            return split_kv_attention(q, k, v, positions, kv_lengths, config=ATTENTION, implementation=implementation)

        full, other_row, seen_changed = jax.lax.map(lambda k: attend(q, k, v, positions), jnp.stack([k, other, seen]))
        return {
            "full": full,
            "T=1": attend(q[:, -1:], k, v, positions[:, -1:]),
            "T=7": attend(q[:, 5:12], k, v, positions[:, 5:12]),  # across the two tiles of the chunk
            "other row": other_row,
            "row alone": attend(q[:1], k[:1], v[:1], positions[:1], kv_lengths[:1]),
            "capacity doubled": attend(q, grow(k), grow(v), positions),
            "seen": seen_changed,
        }

    out = {name: np.asarray(a) for name, a in attend_all(q, k, v, positions, kv_lengths, other, seen).items()}
    full = out["full"]
    assert np.isfinite(full).all()  # the NaN written into every unwritten slot never reached the output
    # A query alone (T = 1) and in a chunk of 7 gives what it gives in the chunk of 16.
    assert_bitwise(out["T=1"], full[:, -1:], "T=1 vs T=16")
    assert_bitwise(out["T=7"], full[:, 5:12], "T=7 vs T=16")
    # Whatever the other row holds, and with the row alone.
    assert_bitwise(out["other row"][0], full[0], "another row's cache changed")
    assert_bitwise(out["row alone"][0], full[0], "the row alone")
    # With a cache twice as large (its new half unwritten: NaN).
    assert_bitwise(out["capacity doubled"], full, "capacity doubled")
    # The control: a change the query can see does change it.
    assert not np.array_equal(out["seen"][0, -1], full[0, -1])


# ----------------------------------------------------------------------------------------------
# bi_matmul and rms_norm: a row's result does not depend on the other rows


# Legal on both compilers (Mosaic: 128-multiples in the last dimension); K = 200 pads to two blocks.
MATMUL = MatmulConfig(bm=16, bn=128, bk=128)


def _matmul_inputs():
    rng = np.random.default_rng(3)
    return rng.standard_normal((64, 200)).astype(np.float32), rng.standard_normal((200, 96)).astype(np.float32)


@pytest.mark.parametrize("implementation", ALL)
def test_bi_matmul_matches_float64(implementation):
    x, w = _matmul_inputs()
    got = bi_matmul(x.reshape(4, 16, 200), w, config=MATMUL, implementation=implementation)
    assert got.shape == (4, 16, 96) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got).reshape(64, 96), x.astype(np.float64) @ w, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("implementation", PALLAS)
def test_bi_matmul_rows_are_batch_invariant(implementation):
    x, w = _matmul_inputs()
    full = np.asarray(jax.jit(lambda x, w: bi_matmul(x, w, config=MATMUL, implementation=implementation))(x, w))
    # The row counts where the tiling changes (bm = 16: one to four row tiles, the last one full, one
    # row into it, or partial), not all 64; each its own call at its own M, all in one jitted program
    # (one compile of the interpreter, not one per M).
    rows = (1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64)
    every_m = jax.jit(lambda x, w: [bi_matmul(x[:m], w, config=MATMUL, implementation=implementation) for m in rows])
    for m, got in zip(rows, every_m(x, w), strict=True):
        assert_bitwise(got, full[:m], f"x[:{m}] @ w")


def test_tpu_matmul_tiles_come_from_k_and_n_and_keep_the_bits():
    """The TPU kernel's weight tiles are chosen from K and N (never M) and its reduction stays the
    config's bk blocks in order: wide tiles give the bits of the 128 × bk tiling."""
    from pallas_kernels.bi_matmul import tpu as matmul_tpu

    rng = np.random.default_rng(5)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((24, 512), (512, 512)))
    kw = {"bm": 16, "bn": 128, "bk": 128, "out_dtype": jnp.float32, "interpret": True}
    tiles = matmul_tpu.weight_tiles(
        512, 512, bm=16, bn=128, bk=128, x_dtype=x.dtype, w_dtype=w.dtype, out_dtype=jnp.float32
    )
    assert tiles == (256, 512), tiles  # all of K in one step; two column tiles (a v5p's two cores)
    # the four calls in one jitted program: one compile of the interpreter
    calls = jax.jit(
        lambda x, w: (
            matmul_tpu.bi_matmul(x, w, **kw),
            matmul_tpu.bi_matmul(x, w, tiles=(128, 128), **kw),
            *(matmul_tpu.bi_matmul(x[:m], w, **kw) for m in (1, 17)),
        )
    )
    wide, narrow, *first_rows = (np.asarray(a) for a in calls(x, w))
    assert_bitwise(wide, narrow, "(256, 512) tiles vs (128, 128)")
    np.testing.assert_allclose(wide, x.astype(np.float64) @ w, rtol=1e-5, atol=5e-5)
    for m, got in zip((1, 17), first_rows, strict=True):
        assert_bitwise(got, wide[:m], f"x[:{m}] @ w")


def test_xla_dot_on_cpu_is_not_batch_invariant():
    """The control that makes the test above mean something: XLA's own dot changes rows with M."""
    x, w = _matmul_inputs()
    full = np.asarray(jnp.dot(x, w))
    assert any(not np.array_equal(np.asarray(jnp.dot(x[:m], w)), full[:m]) for m in range(1, 65))


@pytest.mark.parametrize("implementation", ALL)
def test_rms_norm_matches_and_rows_are_independent(implementation):
    x, _ = _matmul_inputs()
    scale = np.random.default_rng(4).standard_normal(200).astype(np.float32)
    norm = lambda x, scale: rms_norm(x, scale, eps=1e-6, implementation=implementation)
    full = np.asarray(jax.jit(norm)(x, scale))
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-5)
    if implementation != "reference":
        rows = (1, 7, 33)  # each its own call, all in one jitted program
        every_m = jax.jit(lambda x, s: [norm(x[:m], s) for m in rows])
        for m, got in zip(rows, every_m(x, scale), strict=True):
            assert_bitwise(got, full[:m], f"rows [:{m}]")


# ----------------------------------------------------------------------------------------------
# Gradients: the kernels' forward, the XLA functions' backward


def _value_and_grads(fn, args):
    return jax.value_and_grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("implementation", ["interpret_gpu"])
def test_kernel_gradients_match_xla_and_the_forward_is_the_kernels(implementation):
    rng = np.random.default_rng(11)
    lengths = [200, 77]
    q, k, v, positions, kv_lengths = _attention_case(
        rng, b=2, t=5, hq=4, hkv=2, d=64, s=256, lengths=lengths, start=[195, 70]
    )
    x, w = _matmul_inputs()
    scale = rng.standard_normal(200).astype(np.float32)
    cases = {
        "split_kv_attention": (
            lambda q, k, v: split_kv_attention(
                q, k, v, positions, kv_lengths, config=ATTENTION, implementation=implementation
            ),
            lambda q, k, v: attention_reference.softmax_attention(q, k, v, positions, kv_lengths, scale=64**-0.5),
            (q, k, v),
        ),
        "bi_matmul": (
            lambda x, w: bi_matmul(x, w, config=MATMUL, implementation=implementation),
            lambda x, w: jnp.dot(x, w, precision="highest"),
            (x, w),
        ),
        "rms_norm": (
            lambda x, s: rms_norm(x, s, eps=1e-6, implementation=implementation),
            lambda x, s: x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * s,
            (x, scale),
        ),
    }
    # Three programs, not one per case and kind: the kernels' values and gradients, the kernels'
    # forwards (apart: in one program with the gradients, XLA could share the forward between them),
    # and the XLA functions' values and gradients.
    args = {name: case_args for name, (_, _, case_args) in cases.items()}
    kernel_grads = jax.jit(lambda args: {n: _value_and_grads(cases[n][0], a) for n, a in args.items()})(args)
    forwards = jax.jit(lambda args: {n: jnp.sum(cases[n][0](*a) ** 2) for n, a in args.items()})(args)
    # the reference sees zeros where the cache is unwritten (NaN): the kernel's gradient must not see them
    zeroed = jax.tree.map(lambda a: np.nan_to_num(np.asarray(a)), args)
    xla_grads = jax.jit(lambda args: {n: _value_and_grads(cases[n][1], a) for n, a in args.items()})(zeroed)
    for name in cases:
        value, grads = kernel_grads[name]
        # the value under differentiation is the kernel's own forward, bit for bit
        assert_bitwise(value, forwards[name], f"{name}: forward under grad")
        want_value, want = xla_grads[name]
        np.testing.assert_allclose(float(value), float(want_value), rtol=1e-5, err_msg=name)
        for i, (g, g_want) in enumerate(zip(grads, want, strict=True)):
            assert np.isfinite(np.asarray(g)).all(), f"{name}: gradient {i} is not finite"
            g_want = np.asarray(g_want)  # float32 sums in another order: tolerance on the gradient's scale
            np.testing.assert_allclose(g, g_want, rtol=1e-4, atol=1e-5 * np.abs(g_want).max(), err_msg=f"{name} {i}")


# ----------------------------------------------------------------------------------------------
# The frame


def test_implementations_resolve_with_clear_errors():
    variants = {"reference": lambda x: ("ref", x), "gpu": lambda x, interpret: ("gpu", interpret), "tpu": None}
    assert resolve("op", "reference", variants)(1) == ("ref", 1)
    assert resolve("op", "interpret", variants, backend="cpu")(1) == ("gpu", True)
    assert resolve("op", "pallas", variants, backend="gpu")(1) == ("gpu", False)
    assert resolve("op", None, variants, backend="cpu")(1) == ("ref", 1)
    assert resolve("op", lambda x: "mine", variants)(1) == "mine"
    with pytest.raises(ValueError, match="unknown implementation 'triton'"):
        resolve("op", "triton", variants)
    with pytest.raises(ValueError, match="on CPU use 'interpret'"):
        resolve("op", "pallas", variants, backend="cpu")
    with pytest.raises(ValueError, match="multiple of block_kv"):
        SplitKVConfig(split_size=100, block_kv=32)
    with pytest.raises(ValueError, match="GQA grouping"):
        split_kv_attention(
            jnp.zeros((1, 1, 3, 8)), jnp.zeros((1, 8, 2, 8)), jnp.zeros((1, 8, 2, 8)), jnp.zeros((1, 1)), jnp.ones(1)
        )
    with pytest.raises(ValueError, match=r"\[\.\.\., K\] by \[K, N\]"):
        bi_matmul(jnp.zeros((2, 3)), jnp.zeros((4, 5)))


def test_the_kernels_trace_under_jit():
    x, w = _matmul_inputs()
    fn = jax.jit(lambda x, w: bi_matmul(x, w, config=MATMUL, implementation="interpret"))
    np.testing.assert_allclose(np.asarray(fn(x, w)), x @ w, rtol=1e-4, atol=1e-4)


def test_the_benches_run_and_fill_their_tables(capsys):
    from pallas_kernels import benchmarking
    from pallas_kernels.bi_matmul import bench as matmul_bench
    from pallas_kernels.split_kv_attention import bench as attention_bench

    for module in (attention_bench, matmul_bench):
        rows = module.run(implementation="interpret", quick=True, bandwidth=1e10, iters=1)
        assert len(rows) == len(module.shapes(True))
        assert all(r["ms"] > 0 and r["xla ms"] > 0 and r["TFLOP/s"] > 0 for r in rows)
        benchmarking.print_table(rows, module.COLUMNS)
        header = capsys.readouterr().out.splitlines()[0]
        assert all(h in header for _, h, _ in module.COLUMNS)
