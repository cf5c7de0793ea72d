"""The voice-activity projection loss (`train/vap.py`): its targets, where it reads the model, and that
it is off unless asked for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import sharding, stream
from interaction_jax.data import render
from interaction_jax.data.bank import LiveClips
from interaction_jax.data.episode import Episode
from interaction_jax.model import step as step_lib
from interaction_jax.testing import random_batch
from interaction_jax.train import loop, optimizer, state, vap
from interaction_jax.train import loss as loss_lib
from tests.test_render import synthetic_episode
from tests.test_train import small_config

VAP = ("model.vap_horizon=3", "train.vap_weight=0.5")


def test_voice_by_chunk_is_the_share_of_each_chunk_the_spans_cover():
    s = stream.StreamConfig()  # 200 ms chunks
    got = render.voice_by_chunk([[0.1, 0.5], [0.9, 1.0], [1.1, 2.0]], 6, s)
    np.testing.assert_allclose(got, [0.5, 1.0, 0.5, 0.0, 0.5, 0.5], atol=1e-6)  # the last span runs past the end
    assert got.dtype == np.float32


def test_episode_windows_carry_the_user_speaking_share_and_zero_on_padding():
    s = stream.StreamConfig()
    ep = synthetic_episode(s, num_chunks=23)
    ep = Episode(**{**ep.__dict__, "annotations": {"user_speech": [[0.3, 1.0], [3.9, 4.5]]}})
    windows = render.episode_windows(ep, s, 10)
    speaking = np.concatenate([w["user_speaking"] for w in windows])
    expected = np.zeros(30, np.float32)
    expected[:23] = render.voice_by_chunk([[0.3, 1.0], [3.9, 4.5]], 23, s)
    np.testing.assert_array_equal(speaking, expected)
    assert speaking[1:5].tolist() == [0.5, 1.0, 1.0, 1.0] and speaking[19:24].tolist() == [0.5, 1.0, 1.0, 0.5, 0.0]
    # an episode made by hand without the annotation gives windows without targets, not made-up ones
    assert "user_speaking" not in render.episode_windows(synthetic_episode(s), s, 10)[0]
    with pytest.raises(ValueError, match=r"user_speaking has shape \(5,\), expected one value per chunk: \(23,\)"):
        render.windows(render.chunk_payloads(ep, s)[0], s, 10, user_speaking=np.zeros(5))


def test_decision_tokens_are_each_chunks_last_input_token():
    s = stream.StreamConfig()
    chunks = 8
    kind = stream.assemble_window(s, 0, render.chunk_payloads(synthetic_episode(s, chunks), s)[0])["kind"]
    got = np.asarray(stream.decision_tokens(jnp.asarray(kind)[None], chunks))[0]
    # chunk k's input block ends right before its output block, which is its last text_out + audio slots
    outputs = s.text_out_slots + s.audio_slots
    expected = [stream.chunk_start(s, k + 1) - outputs - 1 for k in range(chunks)]
    assert got.tolist() == expected
    assert (kind[got] == stream.Kind.TEXT_IN).all() and (kind[got + 1] == stream.Kind.TEXT_OUT).all()


def test_targets_are_the_next_chunks_and_the_window_end_and_padding_weigh_nothing():
    voice = jnp.asarray([[0.0, 1.0, 0.5, 0.0, 1.0]])
    valid = jnp.asarray([[True, True, True, True, False]])  # the last chunk is padding
    targets, weights = vap.vap_targets(voice, valid, horizon=2)
    np.testing.assert_array_equal(targets[0], [[1.0, 0.5], [0.5, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(weights[0], [[1, 1], [1, 1], [1, 0], [0, 0], [0, 0]])


def test_vap_loss_is_the_weighted_mean_binary_cross_entropy():
    logits = jnp.asarray([[0.0, 2.0], [-1.0, 3.0]])
    targets = jnp.asarray([[1.0, 0.0], [0.5, 1.0]])
    weights = jnp.asarray([[1.0, 1.0], [1.0, 0.0]])
    bce = lambda z, y: -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    expected = (bce(0.0, 1.0) + bce(2.0, 0.0) + bce(-1.0, 0.5)) / 3
    assert float(vap.vap_loss(logits, targets, weights)) == pytest.approx(expected, rel=1e-6)


def test_the_weight_needs_a_head():
    with pytest.raises(config_lib.ConfigError, match=r"^train\.vap_weight: .*the model has no head for it"):
        config_lib.validate(small_config("train.vap_weight=0.5"))
    config_lib.validate(small_config(*VAP))


def test_off_by_default_no_head_and_no_term():
    cfg = small_config()
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    assert "vap_head" not in params
    batch = random_batch(cfg.stream, 3, 1)
    _, metrics = jax.eval_shape(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg), params)
    assert "vap" not in metrics
    # control: with the weight on, the same call has the term
    on = small_config(*VAP)
    params = jax.eval_shape(lambda: step_lib.init_params(on, jax.random.key(0)))
    batch |= {"user_speaking": np.zeros((1, 3), np.float32)}
    assert "vap" in jax.eval_shape(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=on), params)[1]


def test_the_loss_adds_its_weighted_term_and_trains_the_trunk():
    cfg = small_config(*VAP)
    off = config_lib.override(cfg, ["train.vap_weight=0"])
    params = step_lib.init_params(cfg, jax.random.key(0))
    assert params["vap_head"]["kernel"].shape == (cfg.model.d_model, 3)
    chunks = 4
    speaking = np.asarray([[0, 1, 1, 0], [1, 0.5, 0, 0]], np.float32)
    batch = random_batch(cfg.stream, chunks, 2) | {"user_speaking": speaking}
    rng = jax.random.key(1)

    @jax.jit
    def losses_and_grads(params, batch):
        loss, metrics = loss_lib.loss_fn(params, batch, rng, cfg=cfg)
        loss_off, metrics_off = loss_lib.loss_fn(params, batch, rng, cfg=off)
        vap_only = lambda p: vap.projection_loss(p, step_lib.window_forward(p, batch, cfg=cfg)[0], batch, cfg=cfg)
        return loss, metrics["vap"], loss_off, "vap" in metrics_off, jax.grad(vap_only)(params)

    loss, term, loss_off, off_has_term, grads = losses_and_grads(params, batch)
    assert not off_has_term and float(term) > 0
    assert float(loss - loss_off) == pytest.approx(0.5 * float(term), rel=1e-5)
    # the head reads the decision states, so its gradient reaches the transformer's own weights
    assert float(jnp.abs(grads["block0"]["attn"]["wq"]).sum()) > 0
    assert float(jnp.abs(grads["text_head"]["kernel"]).sum()) == 0  # control: the text head plays no part
    with pytest.raises(KeyError, match="no 'user_speaking'"):
        jax.eval_shape(lambda p: loss_lib.loss_fn(p, random_batch(cfg.stream, chunks, 2), rng, cfg=cfg), params)


def test_the_held_out_evaluation_reports_the_term_when_it_is_on():
    """The trainer's held-out evaluation averages the VAP loss over its batches, beside the text CE."""

    def held_out(cfg):
        opt = optimizer.make_optimizer(cfg.train)
        mesh = sharding.make_mesh(cfg.mesh)
        heldout = loop.HeldOut(cfg, LiveClips(), mesh, state.state_shardings(cfg, opt, mesh))
        return heldout.evaluate(state.init_state(cfg, opt, mesh).params)

    sets = ("train.eval_episodes=2", "train.batch_size=8")  # 18 windows of 5 chunks: two batches
    on = held_out(small_config(*sets, *VAP, mesh="cpu-1"))
    assert 0.1 < on["vap"] < 5 and on["loss"] > on["text_ce"]
