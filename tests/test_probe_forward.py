"""`step(..., probe=True)`: the forward pass's attention weights and router choices, and their aggregations.

The probe changes nothing it looks at (hidden states, cache and losses are the same bits), and off it is
not traced at all (the jaxpr is the plain apply's, and the weights function is never called). The
weights are the layer's softmax (checked against numpy from the layer's own q and k, and against its
output through v), the router arrays are its softmax and top-k, and the scanned, rematerialised and
unrolled layer stacks report the same arrays. `probing.internals` runs an episode through it and
aggregates by token kind, by chunk lag and by expert; each aggregation is checked on hand-made arrays
with known answers and a control that a wrong mapping changes them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.data import render
from interaction_jax.data.episode import Episode, TextEvent, frame_times
from interaction_jax.model import attention as attention_lib
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import kernels, transformer
from interaction_jax.model import step as step_lib
from interaction_jax.model.layers import RMSNorm
from interaction_jax.probing import internals
from interaction_jax.stream import Kind
from interaction_jax.testing import random_batch
from tests.fixtures import token_slice

# Three layers with dense_every 2: MoE, dense, MoE; scanned, one group of (MoE, dense) and layer 2 unrolled.
# window_block 16 makes the whole-window path attend in blocks (the path whose weights the probe recomputes).
CFG = config_lib.override(
    config_lib.preset("tiny"),
    [
        "model.n_layers=3",
        "model.dense_every=2",
        "model.d_model=64",
        "model.head_dim=16",
        "model.expert_mlp=64",
        "model.dense_mlp=128",
        "model.flow_hidden=64",
        "model.flow_blocks=1",
        "kernels.window_block=16",
    ],
)
CHUNKS = 3  # 52 tokens: a frame chunk (20 tokens) and two without (16 each)
ROWS = 2
SPARE = 8  # cache slots past the window: never written, always masked


def with_model(cfg: config_lib.Config, **kw) -> config_lib.Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kw))


@pytest.fixture(scope="module")
def params():
    return step_lib.init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
    return {k: v for k, v in random_batch(CFG.stream, CHUNKS, ROWS, seed=3).items() if k != "audio_mel"}


def empty_cache(cfg: config_lib.Config, batch: dict) -> dict:
    return kv_cache.init_cache(cfg.model, ROWS, batch["kind"].shape[1] + SPARE)


def jit_step(cfg: config_lib.Config, window: bool, probe: bool):
    return jax.jit(lambda p, c, b: step_lib.step(p, c, b, cfg=cfg, window=window, probe=probe))


@pytest.mark.parametrize("window", [False, True])
def test_probe_leaves_hidden_states_cache_and_losses_bit_identical(params, batch, window):
    cache = empty_cache(CFG, batch)
    hidden, new_cache, aux = jit_step(CFG, window, False)(params, cache, batch)
    hidden_p, new_cache_p, aux_p = jit_step(CFG, window, True)(params, cache, batch)
    np.testing.assert_array_equal(hidden_p, hidden)
    jax.tree.map(np.testing.assert_array_equal, new_cache_p, new_cache)
    assert set(aux_p) == set(aux) | {"probe"}
    for name in aux:
        np.testing.assert_array_equal(aux_p[name], aux[name])


def plain_step(params, cache, batch, *, cfg, window):
    """`step` as it was before the probe: the model applied without any mutable collection."""
    slots = step_lib.token_slots(batch["kind"], cache["length"], kv_cache.capacity(cache))
    hidden, layers, aux = step_lib.build_model(cfg, window).apply({"params": params}, batch, cache, slots)
    written = jnp.sum(batch["kind"] != Kind.PAD, axis=1, dtype=jnp.int32)
    return hidden, {"layers": layers, "length": cache["length"] + written, "chunk": cache["chunk"]}, aux


@pytest.mark.parametrize("model", [{}, {"scan_layers": True, "remat": "minimal"}], ids=["unrolled", "scan+remat"])
@pytest.mark.parametrize("window", [False, True])
def test_probe_off_traces_the_plain_program_and_no_probe_code(params, batch, monkeypatch, model, window):
    cfg = with_model(CFG, **model)
    p = transformer.stack_layers(params, cfg.model) if cfg.model.scan_layers else params
    cache = empty_cache(cfg, batch)

    def probe_code(*args, **kwargs):
        raise AssertionError("probe code reached with the probe off")

    # Every probe value is computed under the modules' mutability check, right before its `sow`.
    monkeypatch.setattr(kernels, "attention_weights", probe_code)
    monkeypatch.setattr(nn.Module, "sow", probe_code)
    off = jax.make_jaxpr(lambda p, c, b: step_lib.step(p, c, b, cfg=cfg, window=window))(p, cache, batch)
    plain = jax.make_jaxpr(lambda p, c, b: plain_step(p, c, b, cfg=cfg, window=window))(p, cache, batch)
    assert str(off) == str(plain)
    with pytest.raises(AssertionError, match="probe off"):  # control: the probe does reach the function
        jax.make_jaxpr(lambda p, c, b: step_lib.step(p, c, b, cfg=cfg, window=window, probe=True))(p, cache, batch)


def numpy_attention_weights(q: np.ndarray, k: np.ndarray, query_slots: np.ndarray) -> np.ndarray:
    """softmax(q·k/√d) over the slots each query sees, [B, H, T, S] (query head h reads kv head h // group)."""
    group = q.shape[2] // k.shape[2]
    k = np.repeat(k.astype(np.float64), group, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    visible = np.arange(k.shape[1])[None, None, :] <= query_slots[:, :, None]
    scores = np.where(visible[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def test_attention_weights_are_the_layers_softmax_and_reproduce_its_output(params, batch):
    """A call after a prefix (so queries see earlier calls' slots, their own block causally, and never the
    unwritten spare slots): layer 0's probe weights against numpy from its own q and k, and through v and
    the output projection against the layer's output."""
    split = stream.chunk_start(CFG.stream, 2)
    total = batch["kind"].shape[1]
    prefix, rest = token_slice(batch, 0, split), token_slice(batch, split, total)
    _, cache, _ = jit_step(CFG, False, False)(params, empty_cache(CFG, batch), prefix)
    _, new_cache, aux = jit_step(CFG, False, True)(params, cache, rest)
    weights = np.asarray(aux["probe"]["attention"])
    c = CFG.model
    assert weights.shape == (c.n_layers, ROWS, c.n_heads, total - split, total + SPARE)
    assert weights.dtype == np.float32

    query_slots = np.asarray(step_lib.token_slots(rest["kind"], cache["length"], kv_cache.capacity(cache)))
    visible = np.arange(total + SPARE)[None, None, :] <= query_slots[:, :, None]  # [B, T, S]
    visible = np.broadcast_to(visible[None, :, None], weights.shape)
    assert np.all(weights[~visible] == 0.0)  # exactly zero, not merely small
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)
    assert np.all(weights[visible] > 0.0)

    # Layer 0 by hand: its input is the embedding, its q is the RoPE'd projection of the normed input.
    model = step_lib.build_model(CFG)
    x = model.apply({"params": params}, rest, method=lambda m, b: m.embed(b))
    block = params["block0"]
    xn = RMSNorm(c.norm_eps).apply({"params": block["attn_norm"]}, x)
    q = attention_lib.rope(jnp.einsum("btd,dhk->bthk", xn, block["attn"]["wq"]), rest["position"], c.rope_theta)
    k, v = (np.asarray(new_cache["layers"][0][n]) for n in ("k", "v"))
    reference = numpy_attention_weights(np.asarray(q), k, query_slots)
    np.testing.assert_allclose(weights[0], reference, atol=1e-6)

    layer_out, layer_cache = attention_lib.Attention(c).apply(
        {"params": block["attn"]}, xn, rest["position"], query_slots, cache["layers"][0]
    )
    np.testing.assert_allclose(layer_cache["k"], k, rtol=1e-5, atol=1e-6)  # eager vs jitted: not bitwise
    group = c.n_heads // c.n_kv_heads
    heads = np.einsum("bhts,bshd->bthd", weights[0], np.repeat(v, group, axis=2))
    wo = np.asarray(block["attn"]["wo"])
    np.testing.assert_allclose(np.einsum("bthd,hde->bte", heads, wo), layer_out, rtol=1e-5, atol=1e-5)


def test_router_probe_is_the_softmax_and_its_top_k(params, batch):
    _, _, aux = jit_step(CFG, True, True)(params, empty_cache(CFG, batch), batch)
    probe = jax.device_get(aux["probe"])
    c, t = CFG.model, batch["kind"].shape[1]
    np.testing.assert_array_equal(probe["moe_layers"], [0, 2])  # layer 1 is dense: no router
    assert probe["router_probs"].shape == (2, ROWS, t, c.n_experts) and probe["router_probs"].dtype == np.float32
    assert probe["experts"].shape == (2, ROWS, t, c.top_k) and probe["experts"].dtype == np.int32
    np.testing.assert_allclose(probe["router_probs"].sum(axis=-1), 1.0, atol=1e-6)
    top = np.argsort(-probe["router_probs"], axis=-1, kind="stable")[..., : c.top_k]
    np.testing.assert_array_equal(probe["experts"], top)
    assert not np.array_equal(probe["router_probs"][0], probe["router_probs"][1])  # two layers, two routers


def test_router_probe_of_an_all_dense_stack_is_empty(batch):
    cfg = with_model(CFG, dense_every=1)
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    _, _, aux = jax.eval_shape(
        lambda p, c, b: step_lib.step(p, c, b, cfg=cfg, probe=True), params, empty_cache(cfg, batch), batch
    )
    t, c = batch["kind"].shape[1], cfg.model
    assert aux["probe"]["attention"].shape == (c.n_layers, ROWS, c.n_heads, t, t + SPARE)
    assert aux["probe"]["router_probs"].shape == (0, ROWS, t, c.n_experts)
    assert aux["probe"]["experts"].shape == (0, ROWS, t, c.top_k)
    assert aux["probe"]["moe_layers"].shape == (0,)


@pytest.mark.parametrize(
    "model",
    [{"scan_layers": True}, {"remat": "block"}, {"scan_layers": True, "remat": "minimal"}],
    ids=["scan", "remat", "scan+remat"],
)
def test_probe_arrays_agree_across_layer_stacks(params, batch, model):
    """The scanned stack (one group scanned, layer 2 unrolled after it) and the rematerialised blocks
    report each layer's arrays in layer order, as the unrolled stack does on the same weights."""
    cfg = with_model(CFG, **model)
    p = transformer.stack_layers(params, cfg.model) if cfg.model.scan_layers else params
    _, _, want = jit_step(CFG, True, True)(params, empty_cache(CFG, batch), batch)
    _, _, got = jit_step(cfg, True, True)(p, empty_cache(cfg, batch), batch)
    want, got = want["probe"], got["probe"]
    assert set(got) == set(want)
    for name in ("attention", "router_probs"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name in ("experts", "moe_layers"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ----------------------------------------------------------------------------------------------
# probing.internals


def synthetic_episode(s: stream.StreamConfig, num_chunks: int) -> Episode:
    rng = np.random.default_rng(0)
    n = num_chunks * stream.chunk_samples(s)
    frames = rng.integers(0, 256, (len(frame_times(s, num_chunks)), s.frame_height, s.frame_width, 3), np.uint8)
    return Episode(
        scenario="synthetic",
        seed=0,
        split="heldout",
        num_chunks=num_chunks,
        user_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
        frames=frames,
        user_text=(TextEvent(0.3, tuple(tokenizer.encode("hello"))),),
        model_text=(TextEvent(0.8, tuple(tokenizer.encode("hi"))), TextEvent(1.0, (tokenizer.EOT,))),
        annotations={},
    )


def test_probe_episode_runs_the_whole_stream_as_training_does(params):
    episode = synthetic_episode(CFG.stream, 10)
    got = internals.probe_episode(CFG, params, episode)
    (window,) = render.episode_windows(episode, CFG.stream, episode.num_chunks)
    t, c = window["kind"].shape[0], CFG.model
    np.testing.assert_array_equal(got.kind, window["kind"])
    np.testing.assert_array_equal(got.position, np.arange(t))
    starts = [stream.chunk_start(CFG.stream, k) for k in range(episode.num_chunks)]
    np.testing.assert_array_equal(np.searchsorted(starts, np.arange(t), side="right") - 1, got.chunk)

    assert got.decision_slots.shape == (episode.num_chunks,)
    np.testing.assert_array_equal(got.chunk[got.decision_slots], np.arange(episode.num_chunks))
    assert np.all(got.kind[got.decision_slots] == Kind.TEXT_IN)
    assert np.all(got.kind[got.decision_slots + 1] == Kind.TEXT_OUT)

    batch = {name: value[None] for name, value in window.items() if name != "loss_mask"}
    logits = jax.jit(lambda p, b: step_lib.text_logits(p, step_lib.window_forward(p, b, cfg=CFG)[0], cfg=CFG))
    np.testing.assert_allclose(got.text_logits, logits(params, batch)[0], rtol=1e-5, atol=1e-5)
    again = internals.probe_episode(CFG, params, synthetic_episode(CFG.stream, 10))
    np.testing.assert_array_equal(again.attention, got.attention)
    assert internals._probed_window._cache_size() == 1  # one compile per episode length
    assert got.attention.shape == (c.n_layers, c.n_heads, t, t)
    assert np.all(np.triu(got.attention, k=1) == 0.0)  # a whole window from an empty cache: causal
    np.testing.assert_allclose(got.attention.sum(axis=-1), 1.0, atol=1e-6)
    assert got.router_probs.shape == (2, t, c.n_experts) and got.experts.shape == (2, t, c.top_k)
    np.testing.assert_array_equal(got.moe_layers, [0, 2])

    by_kind = internals.attention_by_key_kind(got.attention, got.decision_slots, got.kind, average_heads=True)
    np.testing.assert_allclose(by_kind.sum(axis=-1), 1.0, atol=1e-9)
    assert np.all(by_kind[:, Kind.PAD] == 0.0) and np.all(by_kind[:, Kind.VIDEO_IN] > 0.0)
    by_lag = internals.attention_by_lag(got.attention, got.decision_slots, np.arange(episode.num_chunks), got.chunk, 4)
    np.testing.assert_allclose(by_lag.sum(axis=-1), 1.0, atol=1e-9)
    by_expert = internals.router_by_kind(got.experts, got.kind, c.n_experts)
    np.testing.assert_allclose(by_expert[:, Kind.AUDIO_IN].sum(axis=-1), c.top_k)


def test_attention_by_key_kind_on_known_weights():
    key_kind = np.array([Kind.AUDIO_IN, Kind.TEXT_IN, Kind.TEXT_IN, Kind.TEXT_OUT])
    attention = np.zeros((1, 2, 4, 4))  # one layer, two heads
    attention[0, 0, 2] = [0.5, 0.25, 0.25, 0.0]
    attention[0, 1, 2] = [1.0, 0.0, 0.0, 0.0]
    attention[0, 0, 3] = [0.0, 0.0, 0.5, 0.5]
    attention[0, 1, 3] = [0.0, 1.0, 0.0, 0.0]
    by_head = internals.attention_by_key_kind(attention, np.array([2]), key_kind)
    assert by_head.shape == (1, 2, stream.NUM_KINDS)
    np.testing.assert_allclose(by_head[0, 0, [Kind.AUDIO_IN, Kind.TEXT_IN]], [0.5, 0.5])
    np.testing.assert_allclose(by_head[0, 1, Kind.AUDIO_IN], 1.0)
    averaged = internals.attention_by_key_kind(attention, np.array([2, 3]), key_kind, average_heads=True)
    want = np.zeros((1, stream.NUM_KINDS))
    want[0, [Kind.AUDIO_IN, Kind.TEXT_IN, Kind.TEXT_OUT]] = [0.375, 0.5, 0.125]
    np.testing.assert_allclose(averaged, want)
    shuffled = key_kind[[1, 0, 2, 3]]  # control: a wrong slot → kind mapping gives another answer
    assert not np.allclose(
        internals.attention_by_key_kind(attention, np.array([2, 3]), shuffled, average_heads=True), want
    )


def test_attention_by_lag_on_known_weights():
    key_chunk = np.array([0, 0, 1, 1, 2])
    attention = np.zeros((2, 1, 5, 5))  # two layers, one head
    attention[0, 0, 4] = [0.1, 0.2, 0.3, 0.1, 0.3]  # query in chunk 2
    attention[1, 0, 4] = [0.0, 0.0, 0.0, 0.0, 1.0]
    attention[0, 0, 2] = [0.5, 0.0, 0.5, 0.0, 0.0]  # query in chunk 1
    lags = internals.attention_by_lag(attention, np.array([4]), np.array([2]), key_chunk, 3)
    np.testing.assert_allclose(lags, [[0.3, 0.4, 0.3], [1.0, 0.0, 0.0]])
    pooled = internals.attention_by_lag(attention, np.array([4, 2]), np.array([2, 1]), key_chunk, 2)
    np.testing.assert_allclose(pooled[0], [(0.3 + 0.5) / 2, (0.7 + 0.5) / 2])  # lags ≥ 1 in the last column
    wrong = internals.attention_by_lag(attention, np.array([4]), np.array([1]), key_chunk, 3)  # control
    assert not np.allclose(wrong, lags)
    with pytest.raises(ValueError, match="n_lags"):
        internals.attention_by_lag(attention, np.array([4]), np.array([2]), key_chunk, 0)


def test_router_by_kind_on_known_choices():
    kind = np.array([Kind.AUDIO_IN, Kind.AUDIO_IN, Kind.TEXT_IN, Kind.TEXT_OUT])
    experts = np.array([[[0, 1], [0, 2], [3, 1], [2, 0]]])  # one MoE layer, top-2 of 4 experts
    got = internals.router_by_kind(experts, kind, 4)
    assert got.shape == (1, stream.NUM_KINDS, 4)
    np.testing.assert_allclose(got[0, Kind.AUDIO_IN], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(got[0, Kind.TEXT_IN], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(got[0, Kind.TEXT_OUT], [1.0, 0.0, 1.0, 0.0])
    assert np.all(np.isnan(got[0, Kind.VIDEO_IN]))  # no VIDEO_IN token: no fraction
    swapped = internals.router_by_kind(experts, kind[[2, 1, 0, 3]], 4)  # control: a wrong kind mapping
    assert not np.allclose(swapped[0, Kind.AUDIO_IN], got[0, Kind.AUDIO_IN])
