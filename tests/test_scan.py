"""Scanned layers (`model.scan_layers`): one block body over stacked parameters, the same model.

The scanned and the unrolled model agree to float tolerance on the same weights (through
`transformer.stack_layers`) for the training forward, the loss and its gradients, and serving ticks;
a control with two layer groups swapped shows the comparison would catch a wrong layer order. The
remat policies (`model.remat`) leave loss and gradients as they are.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import sharding
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib
from interaction_jax.model import transformer
from interaction_jax.testing import random_batch, window_and_chunked_text_logits
from interaction_jax.train import loss as loss_lib
from interaction_jax.train import optimizer

# Five layers with dense_every 2: two scanned groups of (MoE, dense) and one MoE layer unrolled after them.
UNROLLED = config_lib.override(
    config_lib.preset("tiny"),
    [
        "model.n_layers=5",
        "model.dense_every=2",
        "model.d_model=64",
        "model.head_dim=16",
        "model.expert_mlp=64",
        "model.dense_mlp=128",
        "model.flow_hidden=64",
        "model.flow_blocks=1",
        "stream.video=false",  # compiles faster; nothing here depends on the modality
        "data.scenarios=[turn_taking]",
        "data.weights=[1.0]",
    ],
)
SCANNED = config_lib.override(UNROLLED, ["model.scan_layers=true"])


def with_model(cfg: config_lib.Config, **kw) -> config_lib.Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kw))


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)

    def check(path, g, w):
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(w), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )

    jax.tree_util.tree_map_with_path(check, got, want)


@pytest.fixture(scope="module")
def params():
    """Unrolled parameters, and the same weights in the scanned layout."""
    unrolled = step_lib.init_params(UNROLLED, jax.random.key(0))
    return unrolled, transformer.stack_layers(unrolled, SCANNED.model)


@pytest.fixture(scope="module")
def batch():
    return random_batch(UNROLLED.stream, 5, batch=2, seed=3)


def _loss_and_grads(cfg, params, batch):
    fn = jax.value_and_grad(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg), has_aux=True)
    return jax.jit(fn)(params)


@pytest.fixture(scope="module")
def unrolled_loss_and_grads(params, batch):
    return _loss_and_grads(UNROLLED, params[0], batch)


def test_the_layout_conversion_round_trips_exactly_and_matches_the_scanned_init(params):
    unrolled, stacked = params
    scanned_init = jax.eval_shape(lambda: step_lib.init_params(SCANNED, jax.random.key(0)))
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned_init)
    assert jax.tree.map(lambda a: a.shape, stacked) == jax.tree.map(lambda a: a.shape, scanned_init)
    assert set(stacked) - set(unrolled) == {"layers"} and "block4" in stacked and "block3" not in stacked
    assert stacked["layers"]["block1"]["mlp"]["w_up"].shape == (2, 64, 128)  # layers 1 and 3: the dense ones
    np.testing.assert_array_equal(stacked["layers"]["block1"]["mlp"]["w_up"][1], unrolled["block3"]["mlp"]["w_up"])
    count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
    assert count(stacked) == count(unrolled) == count(scanned_init)
    back = transformer.unstack_layers(stacked, SCANNED.model)
    assert jax.tree.structure(back) == jax.tree.structure(unrolled)
    jax.tree.map(np.testing.assert_array_equal, back, unrolled)
    again = transformer.stack_layers(back, SCANNED.model)
    jax.tree.map(np.testing.assert_array_equal, again, stacked)


def test_the_stacked_cache_layout_and_its_conversion():
    m = SCANNED.model
    cache = kv_cache.init_cache(m, batch=2, max_len=7)
    assert kv_cache.is_stacked(cache) and not kv_cache.is_stacked(kv_cache.init_cache(UNROLLED.model, 2, 7))
    assert cache["layers"]["k"].shape == (5, 2, 7, m.n_kv_heads, m.head_dim)
    assert cache["layers"]["k"] is not cache["layers"]["v"]
    assert kv_cache.capacity(cache) == 7
    assert kv_cache.cache_logical_axes(m)["layers"]["k"] == ("layers", "cache_batch", "cache_len", "act_kv_heads", None)
    assert kv_cache.cache_bytes(m, 2, 7) == sum(a.nbytes for a in jax.tree.leaves(cache["layers"]))
    rng = np.random.default_rng(0)
    filled = cache | {"layers": jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), cache["layers"])}
    per_layer = kv_cache.unstack_cache(filled)
    assert len(per_layer["layers"]) == 5
    np.testing.assert_array_equal(per_layer["layers"][3]["v"], filled["layers"]["v"][3])
    jax.tree.map(np.testing.assert_array_equal, kv_cache.stack_cache(per_layer), filled)


def test_scanned_and_unrolled_models_agree_on_the_forward_loss_and_gradients(params, batch, unrolled_loss_and_grads):
    unrolled, stacked = params
    b, t = batch["kind"].shape
    forward = {
        cfg.model.scan_layers: jax.jit(lambda p, c, cfg=cfg: step_lib.step(p, c, batch, cfg=cfg))
        for cfg in (UNROLLED, SCANNED)
    }
    hidden, cache, aux = forward[False](unrolled, kv_cache.init_cache(UNROLLED.model, b, t))
    hidden_s, cache_s, aux_s = forward[True](stacked, kv_cache.init_cache(SCANNED.model, b, t))
    np.testing.assert_allclose(hidden_s, hidden, rtol=1e-5, atol=1e-5)
    assert_trees_close(kv_cache.unstack_cache(cache_s), cache, atol=1e-5)
    assert_trees_close(aux_s, aux)

    (loss, metrics), grads = unrolled_loss_and_grads
    (loss_s, metrics_s), grads_s = _loss_and_grads(SCANNED, stacked, batch)
    np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-5)
    assert_trees_close(metrics_s, metrics, rtol=1e-5, atol=1e-5)
    assert_trees_close(transformer.unstack_layers(grads_s, SCANNED.model), grads, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(grads_s["layers"]["block1"]["mlp"]["w_up"][1]))) > 0  # the last group trains


def test_the_agreement_catches_a_wrong_layer_order(params, batch):
    """The control: the same weights with the two scanned groups swapped give another model."""
    unrolled, stacked = params
    b, t = batch["kind"].shape
    swapped = stacked | {"layers": jax.tree.map(lambda a: a[::-1], stacked["layers"])}
    forward = jax.jit(lambda p: step_lib.step(p, kv_cache.init_cache(SCANNED.model, b, t), batch, cfg=SCANNED)[0])
    want, _, _ = jax.jit(lambda p: step_lib.step(p, kv_cache.init_cache(UNROLLED.model, b, t), batch, cfg=UNROLLED))(
        unrolled
    )
    np.testing.assert_allclose(forward(stacked), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(forward(swapped), want, rtol=1e-3, atol=1e-3)


def test_scanned_serving_ticks_match_the_unrolled_ones_and_the_training_window(params):
    """Three teacher-forced `microturn` ticks on a stacked cache give the unrolled model's logits, and
    the scanned training window's (`testing.window_and_chunked_text_logits`)."""
    unrolled, stacked = params
    window, chunked = window_and_chunked_text_logits(UNROLLED, unrolled)
    window_s, chunked_s = window_and_chunked_text_logits(SCANNED, stacked)
    np.testing.assert_allclose(chunked_s, chunked, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(window_s, window, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked_s, window_s, rtol=1e-5, atol=1e-5)


def _lowered_grad(cfg) -> str:
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    batch = random_batch(cfg.stream, 1, batch=1, seed=0)
    grad = jax.grad(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg)[0])
    return jax.jit(grad).lower(params).as_text()


def test_the_scanned_program_holds_one_block_body():
    """The scanned training gradient's program holds the block body once: as many matmuls at 4 layers
    as at 8 (the unrolled one's grow with depth), inside two more loops (the forward and backward scan)."""
    programs = {
        (n, scan): _lowered_grad(with_model(config_lib.override(UNROLLED, [f"model.n_layers={n}"]), scan_layers=scan))
        for n in (4, 8)
        for scan in (False, True)
    }
    dots = {key: text.count("stablehlo.dot_general") for key, text in programs.items()}
    assert dots[4, True] == dots[8, True]
    assert dots[8, False] > dots[4, False] >= dots[4, True]
    whiles = {key: text.count("stablehlo.while") for key, text in programs.items()}
    assert whiles[4, True] == whiles[8, True] == whiles[4, False] + 2


@functools.cache
def _loss_jaxpr(cfg):
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    batch = random_batch(cfg.stream, 1, batch=1, seed=0)
    return jax.make_jaxpr(jax.grad(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg)[0]))(params)


@pytest.mark.parametrize("remat", ["block", "minimal", "save_dot_except_mlp"])
def test_each_remat_policy_keeps_loss_and_gradients(remat, params, batch, unrolled_loss_and_grads):
    """Every policy gives remat=none's loss and gradients, on the scanned model; the unrolled blocks
    are rematerialised with the same policy (one `checkpoint` per block in both jaxprs)."""
    _, stacked = params
    cfg = with_model(SCANNED, remat=remat)
    (loss, _), grads = unrolled_loss_and_grads
    (loss_r, _), grads_r = _loss_and_grads(cfg, stacked, batch)
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-5)
    assert_trees_close(transformer.unstack_layers(grads_r, cfg.model), grads, rtol=1e-4, atol=1e-6)

    def policies(jaxpr):
        found = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "remat2":  # jax.checkpoint's primitive
                found.append(eqn.params["policy"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found += policies(sub)
        return found

    want = transformer.REMAT_POLICIES[remat]
    # The scan body holds its group's 2 blocks once, plus the unrolled fifth layer.
    assert policies(_loss_jaxpr(cfg).jaxpr) == [want] * 3
    assert policies(_loss_jaxpr(with_model(UNROLLED, remat=remat)).jaxpr) == [want] * 5
    assert policies(_loss_jaxpr(with_model(UNROLLED, remat="none")).jaxpr) == []


def test_decay_mask_ignores_the_stacked_axis(params):
    unrolled, stacked = params
    want = transformer.stack_layers(optimizer.decay_mask(unrolled), SCANNED.model)
    got = optimizer.decay_mask(stacked)
    assert jax.tree.map(bool, jax.tree.map(lambda m: np.all(m), want)) == got
    assert got["layers"]["block0"]["attn_norm"]["scale"] is False and got["layers"]["block0"]["attn"]["wq"] is True


def test_stacked_parameters_and_cache_shard_like_the_unrolled_ones():
    """The leading "layers" axis maps to no mesh axis; the other dimensions keep their shardings."""
    mesh_cfg = config_lib.load_mesh("mesh_configs/cpu-8.yaml")
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:8])

    def specs(cfg):
        with sharding.mesh_context(mesh, mesh_cfg):
            boxed = jax.eval_shape(lambda: step_lib.init_variables(cfg, jax.random.key(0)))["params"]
            return jax.tree.map(lambda s: s.spec, sharding.tree_shardings(boxed, mesh, mesh_cfg))

    unrolled, stacked = specs(UNROLLED), specs(SCANNED)
    for name, leaf in (("moe", "w_up"), ("attn", "wq")):
        block = "block0" if name == "moe" else "block1"
        assert stacked["layers"][block][name][leaf] == jax.sharding.PartitionSpec(None, *unrolled[block][name][leaf])
    cache, want = (
        sharding.axes_tree_shardings(kv_cache.cache_logical_axes(cfg.model), mesh, mesh_cfg)
        for cfg in (SCANNED, UNROLLED)
    )
    assert want["layers"][0]["k"].spec[:3] == (("data", "expert"), None, "tensor")
    assert cache["layers"]["k"].spec == jax.sharding.PartitionSpec(None, *want["layers"][0]["k"].spec)


def test_presets_scan_the_large_models_and_remat_names_are_checked():
    assert not config_lib.preset("tiny").model.scan_layers
    assert all(config_lib.preset(p).model.scan_layers for p in ("small", "base", "tml-small-shape"))
    assert transformer.REMAT_POLICIES["full"] is transformer.REMAT_POLICIES["block"] is None
    with pytest.raises(config_lib.ConfigError, match=r"model\.remat"):
        config_lib.override(UNROLLED, ["model.remat=everything"])


@pytest.mark.slow
def test_bitwise_alignment_holds_for_the_scanned_model():
    """`kernels.alignment=bitwise` through the layer scan: serving ticks on the stacked cache give the
    training window's logits bit for bit (as `test_alignment` checks unrolled); with XLA's ops the two
    differ (the control)."""
    from tests.test_alignment import BASE

    scanned = config_lib.override(BASE, ["model.n_layers=2", "model.scan_layers=true"])
    params = step_lib.init_params(scanned, jax.random.key(0))
    window, chunked = window_and_chunked_text_logits(
        config_lib.validate(config_lib.override(scanned, ["kernels.alignment=bitwise"])), params
    )
    np.testing.assert_array_equal(chunked, window)
    window, chunked = window_and_chunked_text_logits(config_lib.validate(scanned), params)
    np.testing.assert_allclose(chunked, window, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(chunked, window)


def test_a_scanned_serving_tick_updates_the_stacked_cache_in_place():
    """The stacked cache is written in place (the scan's carry), not copied into a second, scanned-out
    cache: the tick's temporaries exceed the unrolled tick's by a layer's slice (measured: 1.0 MiB of
    a 5 MiB cache), where a second cache would add all of it (with the cache as the scan's input and
    output, tiny's tick held 114 MiB of temporaries against 28 MiB unrolled)."""
    from interaction_jax.testing import microturn_block, random_chunks

    def temp_bytes(cfg):
        params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
        cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.model, 2, 2048))
        block = microturn_block(cfg.stream, random_chunks(cfg.stream, 0, 1, 0) * 2)
        block = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), block)
        sampling = step_lib.Sampling.from_config(cfg)
        lowered = step_lib.jit_microturn(cfg).lower(params, cache, block, jax.random.key(0), sampling)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    whole = kv_cache.cache_bytes(UNROLLED.model, 2, 2048)
    unrolled, scanned = temp_bytes(UNROLLED), temp_bytes(SCANNED)
    assert scanned < unrolled + whole // 2, (scanned, unrolled, whole)


def test_the_serving_engine_runs_the_scanned_model_like_the_unrolled_one(params):
    """`serve.engine.Engine` on the stacked cache: a session opened, closed and reopened in its slot
    (the reset of the row's counters) gets the unrolled engine's outputs."""
    from interaction_jax.serve.engine import ChunkInput, Engine
    from interaction_jax.testing import random_chunks

    s = UNROLLED.stream
    chunks = random_chunks(s, 0, 3, seed=7)

    def run(cfg, p):
        engine = Engine(cfg, p, max_sessions=2, max_len=256)
        outputs = []
        for session in range(2):
            slot = engine.open(seed=session)
            outputs += [engine.tick({slot: ChunkInput(c.audio_in, c.text_in)})[slot] for c in chunks]
            engine.close(slot)
        return outputs

    want, got = run(UNROLLED, params[0]), run(SCANNED, params[1])
    for w, g in zip(want, got, strict=True):
        assert g.chunk == w.chunk
        np.testing.assert_array_equal(g.text, w.text)
        np.testing.assert_allclose(g.mel, w.mel, rtol=1e-4, atol=1e-4)
