"""All-to-all expert parallelism (`model.expert_parallel: all_to_all`): the exchange's bookkeeping
against a numpy simulation of the all-gather path, the all-gather emulation of `ragged_all_to_all`
that CPU meshes run, the MoE module on the cpu-8 mesh against the unsharded model, and the real
`ragged_all_to_all` compiled for TPU (deviceless, libtpu).

`simulate_ragged_all_to_all` is `jax.lax.ragged_all_to_all`'s docstring written in numpy (and checked
on the docstring's own example), so the plans are tested against the collective's stated semantics.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.model import expert_parallel as xp
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model import moe
from pallas_kernels import compile_check
from tests import test_moe

# ----------------------------------------------------------------------------------------------
# A numpy model of the collective and of both expert-parallel paths


def simulate_ragged_all_to_all(operands, outputs, plans):
    """Every shard's result of `ragged_all_to_all` as its docstring states it: shard i sends
    operand[input_offsets[j]:+send_sizes[j]] to shard j // (K / ep), written there at output_offsets[j];
    shard d's result takes recv_sizes[i] rows from each sender's slice addressed to it."""
    ep = len(operands)
    results = [np.array(o, copy=True) for o in outputs]
    for src, plan in enumerate(plans):
        per_shard = len(plan.send_sizes) // ep
        for i in range(len(plan.send_sizes)):
            dst = i // per_shard
            start, size, where = int(plan.input_offsets[i]), int(plan.send_sizes[i]), int(plan.output_offsets[i])
            # the receiver's recv_sizes for this slice: its entry src·per_shard + (i mod per_shard)
            expected = int(plans[dst].recv_sizes[src * per_shard + i % per_shard])
            assert size == expected, f"shard {src} sends {size} rows in slice {i}; shard {dst} expects {expected}"
            assert where + size <= len(results[dst]), f"slice {i} of shard {src} overflows shard {dst}'s buffer"
            results[dst][where : where + size] = operands[src][start : start + size]
    return results


def test_the_simulation_reproduces_the_docstring_example():
    plans = [
        xp.ExchangePlan(*map(np.array, ([0, 1], [1, 2], [0, 0], [1, 1]))),
        xp.ExchangePlan(*map(np.array, ([0, 1], [1, 1], [1, 2], [2, 1]))),
    ]
    out = simulate_ragged_all_to_all([np.array([1, 2, 2]), np.array([3, 4, 0])], [np.zeros(4)] * 2, plans)
    np.testing.assert_array_equal(out[0], [1, 3, 0, 0])
    np.testing.assert_array_equal(out[1], [2, 2, 4, 0])


def _routing(rng, ep, n, n_experts, k, kind):
    """Per-shard expert ids [ep, n, k], distinct within a token."""
    if kind == "random":
        return np.argsort(rng.random((ep, n, n_experts)), axis=-1)[..., :k].astype(np.int32)
    if kind == "collapsed":  # every token of every shard picks experts 0..k-1: all on shard 0
        return np.broadcast_to(np.arange(k, dtype=np.int32), (ep, n, k)).copy()
    if kind == "one_shard_silent":  # nothing goes to the last shard's experts
        return np.argsort(rng.random((ep, n, n_experts - n_experts // ep)), axis=-1)[..., :k].astype(np.int32)
    raise ValueError(kind)


def _swiglu(x, expert, w):
    wg, wu, wd = (a[expert] for a in w)
    g = x @ wg
    return (g / (1 + np.exp(-g)) * (x @ wu)) @ wd


def all_gather_path(xs, weights, ids, w, n_local):
    """The all-gather path in numpy: shard d gathers every shard's tokens, computes the assignments to its
    own experts, and the partial outputs are summed over shards (the reduce-scatter). Returns (what each
    shard computes: a sorted list of (shard, token, expert) per shard, the output [ep, n, D])."""
    ep, n, k = ids.shape
    computed = [[] for _ in range(ep)]
    out = np.zeros(xs.shape, np.float64)
    for d in range(ep):
        for s in range(ep):
            for t in range(n):
                for j in range(k):
                    e = int(ids[s, t, j])
                    if e // n_local == d:
                        computed[d].append((s, t, e))
                        out[s, t] += weights[s, t, j] * _swiglu(xs[s, t], e, w)
    return [sorted(c) for c in computed], out


def all_to_all_path(xs, weights, ids, w, n_local, corrupt=None):
    """The all-to-all path with the module's plans and the numpy collective: each shard sorts its
    assignments by expert and dispatches them; each receiver checks its buffer is expert-major as
    `row_experts` says, computes its rows, and returns them; each sender unsorts and combines.
    `corrupt(plans)` may break the dispatch plans (a control). Returns what `all_gather_path` returns."""
    ep, n, k = ids.shape
    n_experts = ep * n_local
    d_model = xs.shape[-1]
    counts = np.stack([np.asarray(xp.assignment_counts(jnp.asarray(ids[s]), n_experts)) for s in range(ep)])
    dispatch = [jax.tree.map(np.asarray, xp.dispatch_plan(jnp.asarray(counts), s, n_local)) for s in range(ep)]
    back = [jax.tree.map(np.asarray, xp.return_plan(jnp.asarray(counts), s, n_local)) for s in range(ep)]
    if corrupt is not None:
        dispatch = corrupt(dispatch)
    capacity = xp.receive_capacity(n, k, ep, n_local)
    orders = [np.argsort(ids[s].reshape(-1), kind="stable") for s in range(ep)]
    # rows carry (token values, shard, token, expert) so the receivers' contents can be named
    tagged = [
        np.concatenate(
            [xs[s][orders[s] // k], np.stack([np.full(n * k, s), orders[s] // k, ids[s].reshape(-1)[orders[s]]], 1)],
            axis=1,
        )
        for s in range(ep)
    ]
    received = simulate_ragged_all_to_all(tagged, [np.full((capacity, d_model + 3), -1.0)] * ep, dispatch)
    computed, results = [], []
    for d in range(ep):
        sizes = np.asarray(xp.received_group_sizes(jnp.asarray(counts), d, n_local))
        filled = int(sizes.sum())
        assert (received[d][filled:] == -1).all(), f"shard {d} has rows past its {filled} filled ones"
        local = np.asarray(xp.row_experts(jnp.asarray(sizes), capacity))
        assert (local[filled:] == n_local).all()
        tags = received[d][:filled, d_model:].astype(int)
        np.testing.assert_array_equal(tags[:, 2], d * n_local + local[:filled], err_msg=f"shard {d}: not expert-major")
        computed.append(sorted(map(tuple, tags.tolist())))
        rows = np.zeros((capacity, d_model))
        for r in range(filled):
            rows[r] = _swiglu(received[d][r, :d_model], d * n_local + local[r], w)
        results.append(rows)
    returned = simulate_ragged_all_to_all(results, [np.full((n * k, d_model), np.nan)] * ep, back)
    out = np.zeros(xs.shape, np.float64)
    for s in range(ep):
        assert not np.isnan(returned[s]).any(), f"shard {s} did not get every row back"
        slots = np.empty_like(returned[s])
        slots[orders[s]] = returned[s]
        out[s] = np.einsum("nkd,nk->nd", slots.reshape(n, k, d_model), weights[s])
    return computed, out


def _problem(kind, ep=4, n_local=3, n=10, k=2, d=5, f=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = _routing(rng, ep, n, ep * n_local, k, kind)
    xs = rng.normal(size=(ep, n, d))
    weights = rng.uniform(0.1, 1.0, size=(ep, n, k))
    w = (
        rng.normal(size=(ep * n_local, d, f)),
        rng.normal(size=(ep * n_local, d, f)),
        rng.normal(size=(ep * n_local, f, d)),
    )
    return xs, weights, ids, w, n_local


@pytest.mark.parametrize("kind", ["random", "collapsed", "one_shard_silent"])
@pytest.mark.parametrize(("ep", "n_local", "k"), [(4, 3, 2), (2, 2, 2), (4, 1, 3), (8, 4, 8)])
def test_each_shard_computes_what_the_all_gather_path_computes_and_gets_its_outputs_back(kind, ep, n_local, k):
    if kind == "one_shard_silent" and n_local * (ep - 1) < k:
        pytest.skip("too few experts left for k distinct ones")
    problem = _problem(kind, ep=ep, n_local=n_local, k=k)
    want_computed, want_out = all_gather_path(*problem)
    got_computed, got_out = all_to_all_path(*problem)
    assert got_computed == want_computed
    np.testing.assert_allclose(got_out, want_out, rtol=1e-12, atol=1e-12)


def test_the_capacity_is_reached_when_every_token_routes_to_one_shard():
    _, _, ids, _, n_local = _problem("collapsed", ep=4, n_local=3, n=10, k=2)
    counts = jnp.asarray(np.stack([np.bincount(ids[s].reshape(-1), minlength=12) for s in range(4)]))
    assert int(xp.received_group_sizes(counts, 0, n_local).sum()) == xp.receive_capacity(10, 2, 4, n_local)
    assert int(xp.received_group_sizes(counts, 1, n_local).sum()) == 0


@pytest.mark.parametrize(
    "corruption",
    [
        lambda plans: [plans[0]._replace(output_offsets=plans[0].output_offsets + 1), *plans[1:]],
        lambda plans: [plans[0]._replace(input_offsets=np.roll(plans[0].input_offsets, 1)), *plans[1:]],
        lambda plans: [plans[0]._replace(recv_sizes=plans[0].recv_sizes[::-1]), *plans[1:]],
    ],
    ids=["output-offset", "input-offset", "recv-sizes"],
)
def test_a_wrong_plan_is_caught(corruption):
    """The control: the same comparison fails when an offset or a size is off."""
    problem = _problem("random")
    want_computed, want_out = all_gather_path(*problem)
    try:
        got_computed, got_out = all_to_all_path(*problem, corrupt=corruption)
    except AssertionError:
        return
    assert got_computed != want_computed or not np.allclose(got_out, want_out)


def test_plans_are_jittable_with_a_traced_shard_index():
    _, _, ids, _, n_local = _problem("random")
    counts = jnp.asarray(np.stack([np.bincount(ids[s].reshape(-1), minlength=12) for s in range(4)]))
    for fn in (xp.dispatch_plan, xp.return_plan):
        traced = jax.jit(lambda c, s, fn=fn: fn(c, s, n_local))(counts, jnp.int32(2))
        for a, b in zip(traced, fn(counts, 2, n_local), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------
# The all-gather emulation CPU meshes run, under a real shard_map


def _expert_mesh(n):
    return jax.make_mesh((n,), ("expert",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


def _emulated(operands, outputs, plans):
    mesh = _expert_mesh(len(operands))
    stacked = [jnp.stack([jnp.asarray(p[i]) for p in plans]).reshape(-1) for i in range(4)]

    def body(operand, output, *plan):
        return xp.ragged_all_to_all_emulated(operand, output, *plan, axis_name="expert")

    spec = jax.P("expert")
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 6, out_specs=spec))
    out = fn(jnp.concatenate(operands), jnp.concatenate(outputs), *stacked)
    return np.split(np.asarray(out), len(operands))


def test_the_emulation_reproduces_the_docstring_example():
    plans = [([0, 1], [1, 2], [0, 0], [1, 1]), ([0, 1], [1, 1], [1, 2], [2, 1])]
    plans = [xp.ExchangePlan(*(jnp.array(a, jnp.int32) for a in p)) for p in plans]
    out = _emulated([jnp.array([1.0, 2, 2]), jnp.array([3.0, 4, 0])], [jnp.zeros(4)] * 2, plans)
    np.testing.assert_array_equal(out[0], [1, 3, 0, 0])
    np.testing.assert_array_equal(out[1], [2, 2, 4, 0])


def test_the_emulation_agrees_with_the_simulation_on_dispatch_plans():
    ep, n_local, n, k = 4, 3, 10, 2
    _, _, ids, _, _ = _problem("random", ep=ep, n_local=n_local, n=n, k=k)
    counts = jnp.asarray(np.stack([np.bincount(ids[s].reshape(-1), minlength=ep * n_local) for s in range(ep)]))
    plans = [xp.dispatch_plan(counts, s, n_local) for s in range(ep)]
    rng = np.random.default_rng(1)
    operands = [rng.normal(size=(n * k, 3)).astype(np.float32) for _ in range(ep)]
    outputs = [np.full((xp.receive_capacity(n, k, ep, n_local), 3), 7.0, np.float32)] * ep
    want = simulate_ragged_all_to_all(operands, outputs, [jax.tree.map(np.asarray, p) for p in plans])
    got = _emulated([jnp.asarray(o) for o in operands], [jnp.asarray(o) for o in outputs], plans)
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w_)


# ----------------------------------------------------------------------------------------------
# The MoE module, all_to_all on the cpu-8 mesh (emulated exchange) against the unsharded model


def _a2a_cfg(**kw):
    return test_moe._cfg(expert_parallel="all_to_all", **kw)


@pytest.mark.parametrize(
    "rules", [test_moe.RULES_BATCH_OVER_EXPERT, test_moe.RULES_LEN_OVER_EXPERT], ids=["batch-exp", "len-exp"]
)
def test_moe_all_to_all_matches_unsharded(rules):
    module = moe.MoE(_a2a_cfg())
    y, grads, params, _ = test_moe._expert_parallel_run(module, rules, test_moe._cpu8_mesh())
    test_moe._assert_matches_dense_unsharded(y, grads, params)


def test_moe_all_to_all_kernels_match_unsharded():
    module = moe.MoE(_a2a_cfg(moe_dispatch="gmm"), kernels=test_moe.MOE_KERNELS)
    y, grads, params, _ = test_moe._expert_parallel_run(module, test_moe.RULES_BATCH_OVER_EXPERT, test_moe._cpu8_mesh())
    test_moe._assert_matches_dense_unsharded(y, grads, params)


def test_moe_all_to_all_exchanges_only_where_experts_split_tokens():
    """Tokens split over 'expert': the all-to-all exchange (here its emulation) and no psum_scatter;
    tokens not split over it (batch over data only): nothing to send, the all-gather path's psum."""
    x, mask = test_moe._inputs()

    def jaxpr(cfg, rules):
        init = lambda key: moe.MoE(cfg).init(key, x, mask)
        with jax.set_mesh(test_moe._cpu8_mesh()), nn.logical_axis_rules(rules):
            params = nn.meta.unbox(jax.jit(init)(jax.random.key(0))["params"])
            return str(jax.make_jaxpr(lambda p, x: moe.MoE(cfg).apply({"params": p}, x, mask))(params, x))

    exchanged = jaxpr(_a2a_cfg(), test_moe.RULES_BATCH_OVER_EXPERT)
    gathered = jaxpr(test_moe._cfg(), test_moe.RULES_BATCH_OVER_EXPERT)
    assert "reduce_scatter" not in exchanged and "scatter" in exchanged
    assert "reduce_scatter" in gathered
    assert jaxpr(_a2a_cfg(), test_moe.RULES_BATCH_OVER_DATA) == jaxpr(test_moe._cfg(), test_moe.RULES_BATCH_OVER_DATA)


def test_expert_parallel_value_is_checked():
    cfg = dataclasses.replace(
        config_lib.Config(), model=dataclasses.replace(config_lib.Config().model, expert_parallel="alltoall")
    )
    with pytest.raises(config_lib.ConfigError, match=r"model\.expert_parallel"):
        config_lib.validate(cfg)
    with pytest.raises(config_lib.ConfigError, match=r"model\.expert_parallel"):
        config_lib.override(config_lib.Config(), ["model.expert_parallel=ragged"])
    assert config_lib.Config().model.expert_parallel == "all_gather"


# ----------------------------------------------------------------------------------------------
# The real ragged_all_to_all, compiled for TPU (deviceless)


@pytest.mark.compile
@pytest.mark.parametrize("dispatch", ["ragged", "gmm"])
def test_the_all_to_all_path_compiles_for_tpu_with_ragged_all_to_all(dispatch):
    """The MoE module's train-step gradient on 8 v5e chips, experts and tokens over an expert axis of 8,
    with ragged_dot or the MoE kernels (Mosaic): the all_to_all path compiles to ragged-all-to-alls
    (dispatch and return, forward and backward) and no reduce-scatter; the all_gather path to
    all-gathers and reduce-scatters and no ragged one."""
    from interaction_jax import aot

    if not aot.libtpu_available():
        if os.environ.get("PALLAS_KERNELS_REQUIRE_LIBTPU") == "1":
            pytest.fail(f"libtpu is not installed but PALLAS_KERNELS_REQUIRE_LIBTPU=1: {aot.INSTALL_HINT}")
        pytest.skip(f"libtpu is not installed ({aot.INSTALL_HINT})")
    mesh_cfg = dataclasses.replace(
        config_lib.MeshConfig(),
        name="v5e-expert-8",
        device_kind="tpu",
        topology="v5e:2x4",
        axes=config_lib.AxisSizes(data=1, expert=8),
    )
    from interaction_jax import sharding

    mesh = sharding.make_mesh(mesh_cfg, aot.topology_devices(mesh_cfg))
    rules = sharding.axis_rules(mesh_cfg)
    b, t, d = 16, 32, 128
    x_sharding = sharding.logical_sharding(("act_batch", "act_len", "act_embed"), mesh, mesh_cfg)
    x = jax.ShapeDtypeStruct((b, t, d), jnp.bfloat16, sharding=x_sharding)
    mask, key = jnp.ones((b, t), bool), jax.random.key(0)  # made here: nothing runs under the TPU mesh

    def collectives(expert_parallel):
        cfg = test_moe._cfg(
            d_model=d,
            n_experts=16,
            top_k=2,
            expert_mlp=256,
            shared_expert_mlp=0,
            dtype="bfloat16",
            expert_parallel=expert_parallel,
            moe_dispatch=dispatch,
        )
        module = moe.MoE(cfg, kernels=config_lib.KernelsConfig())
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            abstract = jax.eval_shape(module.init, key, x, mask)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(abstract), shardings
        )["params"]
        with kernels_lib.compiled_for("tpu"), jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            loss = lambda p, x: jnp.sum(module.apply({"params": p}, x, mask)[0].astype(jnp.float32))
            with compile_check.no_persistent_cache():
                compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
        assert ("pallas_call" in compiled.as_text()) == (dispatch == "gmm")  # the MoE kernel, compiled
        return aot.parse_collectives(compiled.as_text())

    exchanged, gathered = collectives("all_to_all"), collectives("all_gather")
    assert exchanged["ragged-all-to-all"].count == 4, exchanged  # dispatch + return, and their transposes
    # all-reduced: the router's gradient (f32 [D, E]) and the per-expert counts (int32 [ep, E]), nothing
    # token-sized (an exchange buffer without a varying type costs an all-reduce of it in the backward)
    assert exchanged["all-reduce"].bytes <= d * 16 * 4 + 8 * 16 * 4, exchanged
    assert exchanged["reduce-scatter"].count == 0, exchanged
    assert gathered["ragged-all-to-all"].count == 0 and gathered["reduce-scatter"].count >= 1, gathered
