"""The MoE feed-forward: routing, the three dropless dispatches, aux losses, expert parallelism."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.config import KernelsConfig, ModelConfig
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model import moe

D, F = 16, 24


def _weights(key, n_experts, d=D, f=F):
    kg, ku, kd = jax.random.split(key, 3)
    w_gate = jax.random.normal(kg, (n_experts, d, f)) / np.sqrt(d)
    w_up = jax.random.normal(ku, (n_experts, d, f)) / np.sqrt(d)
    w_down = jax.random.normal(kd, (n_experts, f, d)) / np.sqrt(f)
    return w_gate, w_up, w_down


def _routing(key, n, n_experts, k, kind):
    """weights [n, k] (positive, not necessarily normalised) and distinct expert ids [n, k]."""
    kw, ki = jax.random.split(key)
    weights = jax.random.uniform(kw, (n, k), minval=0.1, maxval=1.0)
    if kind == "random":
        ids = jnp.argsort(jax.random.uniform(ki, (n, n_experts)), axis=-1)[:, :k]
    elif kind == "collapsed":  # every token's first choice is expert 0 (k=1: every assignment)
        ids = jnp.broadcast_to(jnp.arange(k), (n, k))
    elif kind == "sparse":  # only experts E-1 and 1 get tokens; the others are empty
        ids = jnp.broadcast_to(jnp.array([n_experts - 1, 1])[:k], (n, k))
    else:
        raise ValueError(kind)
    return weights, ids.astype(jnp.int32)


def _reference(x, weights, ids, w_gate, w_up, w_down):
    """A per-token loop by hand in float64: y_n = Σ_j w_nj · swiglu_{e_nj}(x_n)."""
    x, weights, ids = np.asarray(x, np.float64), np.asarray(weights, np.float64), np.asarray(ids)
    wg, wu, wd = (np.asarray(w, np.float64) for w in (w_gate, w_up, w_down))
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[n, j]
            g = x[n] @ wg[e]
            h = g / (1.0 + np.exp(-g)) * (x[n] @ wu[e])
            out[n] += weights[n, j] * (h @ wd[e])
    return out


# ----------------------------------------------------------------------------------------------
# Router and aux losses


@pytest.mark.parametrize("normalize", [True, False])
def test_route(normalize):
    logits = jax.random.normal(jax.random.key(0), (32, 8)) * 3.0
    weights, ids = moe.route(logits, 3, normalize)
    assert weights.dtype == jnp.float32 and ids.dtype == jnp.int32
    assert weights.shape == ids.shape == (32, 3)
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    np.testing.assert_array_equal(np.asarray(ids), np.argsort(-probs, axis=-1)[:, :3])
    picked = np.take_along_axis(probs, np.asarray(ids), axis=-1)
    if normalize:
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(weights), picked / picked.sum(-1, keepdims=True), rtol=1e-6)
    else:
        np.testing.assert_allclose(np.asarray(weights), picked, rtol=1e-6)
        assert np.all(np.asarray(weights).sum(-1) < 1.0)


def test_route_bf16_logits_are_routed_in_float32():
    logits = jax.random.normal(jax.random.key(1), (8, 4)).astype(jnp.bfloat16)
    weights, _ = moe.route(logits, 2, True)
    assert weights.dtype == jnp.float32


@pytest.mark.parametrize("n_experts,k", [(4, 1), (4, 2), (8, 2)])
def test_load_balance_uniform_is_one_and_collapsed_is_larger(n_experts, k):
    n = 4 * n_experts
    probs = jnp.full((n, n_experts), 1.0 / n_experts)
    ids = (jnp.arange(n)[:, None] + jnp.arange(k)[None, :]) % n_experts  # every expert equally often
    mask = jnp.ones((n,), bool)
    np.testing.assert_allclose(float(moe.load_balance_loss(probs, ids, mask)), 1.0, rtol=1e-6)

    collapsed_probs = jax.nn.softmax(jnp.zeros((n, n_experts)).at[:, :k].set(10.0), axis=-1)
    collapsed_ids = jnp.broadcast_to(jnp.arange(k), (n, k))
    collapsed = float(moe.load_balance_loss(collapsed_probs, collapsed_ids, mask))
    p = np.asarray(collapsed_probs[0])
    np.testing.assert_allclose(collapsed, n_experts * p[:k].sum() / k, rtol=1e-5)  # f_e = 1/k on the k chosen
    assert collapsed > 1.5


def test_aux_losses_ignore_masked_tokens():
    key_l, key_g = jax.random.split(jax.random.key(2))
    logits = jax.random.normal(key_l, (12, 4))
    garbage = 50.0 * jax.random.normal(key_g, (5, 4))  # would dominate both losses if counted
    all_logits = jnp.concatenate([logits, garbage])
    mask = jnp.arange(17) < 12
    _, ids = moe.route(logits, 2, True)
    _, all_ids = moe.route(all_logits, 2, True)
    probs, all_probs = jax.nn.softmax(logits), jax.nn.softmax(all_logits)
    lb = moe.load_balance_loss(probs, ids, jnp.ones((12,), bool))
    np.testing.assert_allclose(float(moe.load_balance_loss(all_probs, all_ids, mask)), float(lb), rtol=1e-6)
    z = moe.router_z_loss(logits, jnp.ones((12,), bool))
    np.testing.assert_allclose(float(moe.router_z_loss(all_logits, mask)), float(z), rtol=1e-6)
    # by hand: mean over tokens of logsumexp²
    lg = np.asarray(logits, np.float64)
    lse = np.log(np.exp(lg).sum(-1))
    np.testing.assert_allclose(float(z), np.mean(lse**2), rtol=1e-5)
    # nothing valid: zero, not NaN
    assert float(moe.router_z_loss(logits, jnp.zeros((12,), bool))) == 0.0
    assert float(moe.load_balance_loss(probs, ids, jnp.zeros((12,), bool))) == 0.0


# ----------------------------------------------------------------------------------------------
# Dispatches


@pytest.mark.parametrize("kind", ["random", "collapsed", "sparse"])
@pytest.mark.parametrize("n_experts,k", [(4, 1), (4, 2), (8, 1), (8, 2)])
def test_dispatches_agree_and_drop_nothing(n_experts, k, kind):
    n = 40
    kx, kr, kw = jax.random.split(jax.random.key(n_experts * 10 + k), 3)
    x = jax.random.normal(kx, (n, D))
    weights, ids = _routing(kr, n, n_experts, k, kind)
    params = _weights(kw, n_experts)
    ref = _reference(x, weights, ids, *params)
    assert np.abs(ref).max() > 0.1 and np.all(np.abs(ref).max(-1) > 0)  # O(1), and no row trivially zero
    for name, fn in moe.DISPATCHES.items():
        y = jax.jit(fn)(x, weights, ids, *params)
        assert y.dtype == jnp.float32 and y.shape == (n, D), name
        np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=1e-5, err_msg=name)


def test_ragged_local_only_computes_its_experts():
    n_experts, k, n = 8, 2, 30
    kx, kr, kw = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (n, D))
    weights, ids = _routing(kr, n, n_experts, k, "random")
    w_gate, w_up, w_down = _weights(kw, n_experts)
    total = 0.0
    for shard in range(4):  # 4 shards of 2 experts each
        sl = slice(2 * shard, 2 * shard + 2)
        part = moe._experts_ragged_local(x, weights, ids, w_gate[sl], w_up[sl], w_down[sl], 2 * shard)
        keep = np.asarray((ids >= 2 * shard) & (ids < 2 * shard + 2))
        expected = _reference(x, np.where(keep, weights, 0.0), ids, w_gate, w_up, w_down)
        np.testing.assert_allclose(np.asarray(part), expected, atol=1e-5)
        total = total + part
    np.testing.assert_allclose(np.asarray(total), _reference(x, weights, ids, w_gate, w_up, w_down), atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "collapsed"])
def test_ragged_and_gather_gradients_match_dense(kind):
    n_experts, k, n = 4, 2, 24
    kx, kr, kw, kc = jax.random.split(jax.random.key(4), 4)
    x = jax.random.normal(kx, (n, D))
    weights, ids = _routing(kr, n, n_experts, k, kind)
    params = _weights(kw, n_experts)
    cot = jax.random.normal(kc, (n, D))

    def grads(fn):
        loss = lambda x, w, g, u, dn: jnp.sum(fn(x, w, ids, g, u, dn) * cot)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x, weights, *params)

    ref = grads(moe.experts_dense)
    for name in ("ragged", "gather"):
        for i, (a, b) in enumerate(zip(grads(moe.DISPATCHES[name]), ref, strict=True)):
            assert np.abs(np.asarray(b)).max() > 1e-2
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=f"{name} arg {i}")
    if kind == "collapsed":  # experts 2 and 3 got no tokens: zero gradient, not NaN
        for g in ref[2:]:
            assert np.all(np.asarray(g)[2:] == 0)


def test_bfloat16_experts_combine_in_float32():
    n_experts, k, n = 4, 2, 16
    kx, kr, kw = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (n, D))
    weights, ids = _routing(kr, n, n_experts, k, "random")
    params = _weights(kw, n_experts)
    ref = _reference(x, weights, ids, *params)
    for name, fn in moe.DISPATCHES.items():
        y = jax.jit(fn)(x.astype(jnp.bfloat16), weights, ids, *params)
        assert y.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(y), ref, atol=0.1, rtol=0.05, err_msg=name)


# ----------------------------------------------------------------------------------------------
# The module

AXES = ("data", "fsdp", "seq", "tensor", "expert")
BASE_RULES = (
    ("act_len", "seq"),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("exp", "expert"),
    ("exp_mlp", "tensor"),
)
RULES_BATCH_OVER_EXPERT = (("act_batch", ("data", "fsdp", "expert")), *BASE_RULES)
RULES_BATCH_OVER_DATA = (("act_batch", ("data", "fsdp")), *BASE_RULES)
# sequence parallel over the expert axis: tokens are gathered along the length dimension
RULES_LEN_OVER_EXPERT = (("act_batch", ("data", "fsdp")), ("act_len", "expert"), *BASE_RULES[1:])


def _cpu8_mesh():
    """data 2 × tensor 2 × expert 2 (fsdp, seq 1), like mesh_configs/cpu-8."""
    return jax.make_mesh((2, 1, 1, 2, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 5)


def _cfg(**kw):
    base = dict(d_model=D, n_experts=4, top_k=2, expert_mlp=F, shared_expert_mlp=8, moe_dispatch="ragged")
    return ModelConfig(**{**base, **kw})


def _inputs(b=8, t=6):
    x = jax.random.normal(jax.random.key(6), (b, t, D))
    mask = jnp.arange(t)[None, :] < jnp.array([6, 5, 4, 6, 3, 6, 2, 6])[:b, None]
    return x, mask


def test_moe_module_unsharded_dispatches_agree_and_aux():
    x, mask = _inputs()
    cfg = _cfg()
    variables = jax.jit(moe.MoE(cfg).init)(jax.random.key(7), x, mask)
    params = variables["params"]
    assert params["router"].value.shape == (D, 4)
    assert params["w_gate"].value.shape == (4, D, F) and params["w_down"].value.shape == (4, F, D)
    assert params["w_gate"].names == ("exp", "embed", "exp_mlp")
    assert params["w_down"].names == ("exp", "exp_mlp", "embed")
    assert params["router"].names == ("embed", None)
    assert "shared" in params
    outs = {}
    for dispatch in ("dense", "ragged", "gather"):
        module = moe.MoE(dataclasses.replace(cfg, moe_dispatch=dispatch))
        outs[dispatch] = jax.jit(module.apply)(variables, x, mask)
    y, aux = outs["dense"]
    assert y.shape == x.shape and y.dtype == jnp.float32
    for name in ("ragged", "gather"):
        np.testing.assert_allclose(np.asarray(outs[name][0]), np.asarray(y), atol=1e-5, err_msg=name)
    # aux losses by hand (float64 numpy) from the router, over the valid tokens only
    p = jax.tree.map(np.asarray, nn.meta.unbox(params))
    logits = (np.asarray(x, np.float64) @ p["router"])[np.asarray(mask)]  # [n_valid, E]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top2 = np.argsort(-probs, axis=-1)[:, :2]
    f = np.bincount(top2.reshape(-1), minlength=4) / top2.size
    np.testing.assert_allclose(float(aux["load_balance"]), 4 * np.sum(f * probs.mean(0)), rtol=1e-5)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(float(aux["router_z"]), np.mean(lse**2), rtol=1e-5)
    # without the shared expert the output is the routed experts alone
    no_shared = dataclasses.replace(cfg, shared_expert_mlp=0, moe_dispatch="dense")
    trimmed = {"params": {k: v for k, v in params.items() if k != "shared"}}
    y0, _ = jax.jit(moe.MoE(no_shared).apply)(trimmed, x, mask)
    shared = p["shared"]
    xs = np.asarray(x)
    g = xs @ shared["w_gate"]
    np.testing.assert_allclose(
        np.asarray(y) - np.asarray(y0), (g / (1 + np.exp(-g)) * (xs @ shared["w_up"])) @ shared["w_down"], atol=1e-5
    )


def test_moe_module_bfloat16():
    x, mask = _inputs()
    cfg = _cfg(dtype="bfloat16")
    variables = jax.jit(moe.MoE(cfg).init)(jax.random.key(7), x, mask)
    y, aux = jax.jit(moe.MoE(cfg).apply)(variables, x, mask)
    assert y.dtype == jnp.bfloat16 and aux["load_balance"].dtype == jnp.float32
    ref, _ = moe.MoE(dataclasses.replace(cfg, dtype="float32", moe_dispatch="dense")).apply(variables, x, mask)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=0.1, rtol=0.05)


def _loss(module, params, x, mask, cot):
    y, aux = module.apply({"params": params}, x, mask)
    return jnp.sum(y * cot) + aux["load_balance"] + aux["router_z"], y


def _value_and_grad(module, mask, cot):
    return jax.jit(jax.value_and_grad(lambda p, x: _loss(module, p, x, mask, cot), argnums=(0, 1), has_aux=True))


def _expert_parallel_run(module, rules, mesh):
    """(output, (param grads, x grads), params, expert weight specs) of `module` sharded by `rules` over
    `mesh`, checking that the dispatch took the shard_map path."""
    x, mask = _inputs()
    cot = jax.random.normal(jax.random.key(8), x.shape)
    init = lambda key: moe.MoE(_cfg()).init(key, x, mask)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init, jax.random.key(9))
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        params = jax.jit(init, out_shardings=shardings)(jax.random.key(9))["params"]
        specs = {name: params[name].value.sharding.spec for name in ("w_gate", "w_up", "w_down")}
        params = nn.meta.unbox(params)
        grad_fn = _value_and_grad(module, mask, cot)
        assert "shard_map" in str(jax.make_jaxpr(grad_fn)(params, x))
        (_, y), grads = grad_fn(params, x)
    return y, grads, jax.device_get(params), specs


def _assert_matches_dense_unsharded(y, grads, params):
    """The same parameters on one device, dense dispatch, no mesh."""
    x, mask = _inputs()
    cot = jax.random.normal(jax.random.key(8), x.shape)
    (_, ref_y), ref_grads = _value_and_grad(moe.MoE(_cfg(moe_dispatch="dense")), mask, cot)(params, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref_y), atol=1e-5, rtol=1e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, r), g in zip(flat_ref, flat, strict=True):
        assert np.abs(np.asarray(r)).max() > 1e-3, path
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-5, err_msg=str(path))


@pytest.mark.parametrize(
    "rules",
    [RULES_BATCH_OVER_EXPERT, RULES_BATCH_OVER_DATA, RULES_LEN_OVER_EXPERT],
    ids=["batch-exp", "batch-data", "len-exp"],
)
def test_moe_expert_parallel_matches_unsharded(rules):
    y, grads, params, specs = _expert_parallel_run(moe.MoE(_cfg()), rules, _cpu8_mesh())
    assert specs == {
        "w_gate": jax.P("expert", None, "tensor"),
        "w_up": jax.P("expert", None, "tensor"),
        "w_down": jax.P("expert", "tensor", None),
    }
    _assert_matches_dense_unsharded(y, grads, params)
    # the same module with dense dispatch under the mesh takes no shard_map
    x, mask = _inputs()
    with jax.set_mesh(_cpu8_mesh()), nn.logical_axis_rules(rules):
        dense = jax.jit(lambda p, x: moe.MoE(_cfg(moe_dispatch="dense")).apply({"params": p}, x, mask))
        assert "shard_map" not in str(jax.make_jaxpr(dense)(params, x))


# The MoE kernels on these tiny shapes: reductions in blocks of 4 divide D = 16 and F / tensor = 12.
MOE_KERNELS = KernelsConfig(moe_block_k=4)
RULES_EXPERT_MLP_WHOLE = (*RULES_BATCH_OVER_EXPERT[:-1], ("exp_mlp", None))


@pytest.mark.parametrize("dispatch", ["gemv", "gmm"])
def test_moe_kernels_expert_parallel(dispatch):
    """Expert-parallel kernel dispatch: with F split over 'tensor' the module agrees with the dense
    dispatch (outputs and gradients); with F whole, each slot is computed by one shard and summed with
    zeros, so the experts' output is bit-identical to the unsharded kernels'."""
    module = moe.MoE(_cfg(moe_dispatch=dispatch), kernels=MOE_KERNELS)
    y, grads, params, _ = _expert_parallel_run(module, RULES_BATCH_OVER_EXPERT, _cpu8_mesh())
    _assert_matches_dense_unsharded(y, grads, params)

    # F whole: the slots of every shard summed, then combined, are the one-device kernels' bit for bit
    x, _ = _inputs()
    n, k = x.shape[0] * x.shape[1], 2
    weights, ids = _routing(jax.random.key(3), n, 4, k, "random")
    w = _weights(jax.random.key(4), 4)
    local = functools.partial(moe.kernel_local_slots, dispatch=dispatch, kc=MOE_KERNELS)
    with jax.set_mesh(_cpu8_mesh()), nn.logical_axis_rules(RULES_EXPERT_MLP_WHOLE):
        sharded = jax.jit(
            lambda x, weights, ids, *w: moe.experts_parallel(
                x, weights, ids, *w, local, kernels_lib.moe_combine, check_vma=False
            )
        )
        assert "shard_map" in str(jax.make_jaxpr(sharded)(x, weights.reshape(8, 6, k), ids.reshape(8, 6, k), *w))
        y = sharded(x, weights.reshape(8, 6, k), ids.reshape(8, 6, k), *w).reshape(n, -1)
    flat = x.reshape(n, -1)
    alone = jax.jit(lambda: kernels_lib.moe_combine(local(flat, weights, ids, *w, 0), weights))()
    np.testing.assert_array_equal(np.asarray(y), np.asarray(alone))
    ragged = moe.experts_ragged(flat, weights, ids, *w)
    assert not np.array_equal(np.asarray(alone), np.asarray(ragged))  # bit-equality is not a given
    np.testing.assert_allclose(np.asarray(alone), np.asarray(ragged), atol=1e-5)


@pytest.mark.parametrize("dispatch", ["gemv", "gmm"])
def test_moe_kernels_take_an_expert_width_that_is_not_a_multiple_of_the_tile(dispatch):
    """F = 24 with 16-wide tiles (tml-small-shape's 1440 with 128): the module's kernels agree with dense,
    and the config check that lets this through refuses only a model width the tile does not divide."""
    x, mask = _inputs()
    cfg = _cfg(moe_dispatch="dense")
    variables = jax.jit(moe.MoE(cfg).init)(jax.random.key(7), x, mask)
    y, _ = jax.jit(moe.MoE(cfg).apply)(variables, x, mask)
    kernels = KernelsConfig(moe_block_k=16)
    assert F % kernels.moe_block_k and not D % kernels.moe_block_k
    module = moe.MoE(dataclasses.replace(cfg, moe_dispatch=dispatch), kernels=kernels)
    y_kernel, _ = jax.jit(module.apply)(variables, x, mask)
    np.testing.assert_allclose(np.asarray(y_kernel), np.asarray(y), atol=1e-5)
    tml = config_lib.preset("tml-small-shape")
    assert tml.model.expert_mlp % tml.kernels.moe_block_k
    config_lib.validate(config_lib.override(tml, ["model.moe_dispatch=auto"]))


def test_expert_count_must_divide_expert_axis():
    x, mask = _inputs()
    cfg = _cfg(n_experts=3, top_k=1)
    with (
        jax.set_mesh(_cpu8_mesh()),
        nn.logical_axis_rules(RULES_BATCH_OVER_EXPERT),
        pytest.raises(ValueError, match="n_experts=3"),
    ):
        jax.jit(lambda key: moe.MoE(cfg).init(key, x, mask))(jax.random.key(0))
