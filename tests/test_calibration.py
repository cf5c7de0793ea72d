"""The speak decision's probabilities: a PAD-weighted loss skews them by a known factor, and decoding
undoes it (`step.pad_logit_bias`, `Sampling.pad_bias`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib
from interaction_jax.testing import microturn_block, random_chunks
from interaction_jax.train import loss as loss_lib
from tests.test_train import SMALL

PAD, SPEAK = tokenizer.PAD, tokenizer.SPEAK


def _fit_free_logits(targets: np.ndarray, weights: np.ndarray, steps: int = 1500) -> jax.Array:
    """The loss-optimal context-free logits [V] of the text loss `step.text_loss` on these targets."""
    vocab = 384
    opt = optax.adam(0.1)
    logits = jnp.zeros(vocab)
    state = opt.init(logits)

    @jax.jit
    def update(logits, state):
        def loss(z):
            z = jnp.broadcast_to(z, (*targets.shape, vocab))
            return loss_lib.text_loss(loss_lib.cross_entropy(z, targets), weights)

        grads = jax.grad(loss)(logits)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(logits, updates), state

    for _ in range(steps):
        logits, state = update(logits, state)
    return logits


@pytest.mark.parametrize("pad_weight", [0.1, 0.3])
def test_calibration_recovers_the_true_pad_rate(pad_weight):
    """A synthetic stream whose TEXT_OUT slots are PAD 90% of the time, SPEAK 6% and a byte 4%: the model
    the weighted loss learns over-states speaking; adding log(1/w) to PAD recovers the true rates."""
    rng = np.random.default_rng(0)
    n = 500  # the fit recovers the sample's own rates, so a small sample checks as much
    kind = np.tile([stream.Kind.TEXT_IN, stream.Kind.TEXT_OUT], n)
    text = np.full(2 * n, PAD, np.int32)
    draw = rng.choice(3, size=n, p=[0.90, 0.06, 0.04])
    text[1::2] = np.select([draw == 0, draw == 1], [PAD, SPEAK], ord("a"))
    targets, weights = stream.text_targets(kind, text, pad_weight)
    logits = _fit_free_logits(np.asarray(targets), np.asarray(weights))
    raw = jax.nn.softmax(logits)
    fixed = jax.nn.softmax(step_lib.calibrated_logits(logits, step_lib.pad_logit_bias(pad_weight)))
    true_pad = float(np.mean(draw == 0))
    assert float(fixed[PAD]) == pytest.approx(true_pad, abs=0.005)
    assert float(fixed[SPEAK]) == pytest.approx(float(np.mean(draw == 1)), abs=0.005)
    # control: uncorrected, the learned PAD rate is the skewed w·q / (w·q + 1 − q), far from the truth
    skewed = pad_weight * true_pad / (pad_weight * true_pad + 1 - true_pad)
    assert float(raw[PAD]) == pytest.approx(skewed, abs=0.01) and abs(float(raw[PAD]) - true_pad) > 0.1


def test_calibration_holds_under_the_decision_weight():
    """`train.decision_weight` scales PAD and the start tokens alike in the slots where the model is
    silent, so the same log(1/w) correction recovers the true rates there. Each drawn slot follows an
    EOT (the model has just finished), so every one is a decision slot."""
    rng = np.random.default_rng(1)
    n, pad_weight, decision_weight = 500, 0.1, 10.0
    kind = np.tile([stream.Kind.TEXT_IN, stream.Kind.TEXT_OUT, stream.Kind.TEXT_OUT], n)
    text = np.full(3 * n, PAD, np.int32)
    text[1::3] = tokenizer.EOT
    draw = rng.choice(3, size=n, p=[0.90, 0.06, 0.04])
    text[2::3] = np.select([draw == 0, draw == 1], [PAD, SPEAK], tokenizer.DELEGATE)
    targets, weights = stream.text_targets(kind, text, pad_weight, decision_weight)
    targets, weights = np.asarray(targets), np.asarray(weights)
    drawn = np.zeros(3 * n, bool)
    drawn[1::3] = True  # the hidden state before each drawn slot predicts it
    # the decision weight took effect on every drawn slot (a control: without it this would be 0.1 / 1)
    np.testing.assert_allclose(weights[drawn], np.where(draw == 0, pad_weight, 1.0) * decision_weight)
    logits = _fit_free_logits(targets, np.where(drawn, weights, 0.0))
    fixed = jax.nn.softmax(step_lib.calibrated_logits(logits, step_lib.pad_logit_bias(pad_weight)))
    assert float(fixed[PAD]) == pytest.approx(float(np.mean(draw == 0)), abs=0.005)
    assert float(fixed[SPEAK]) == pytest.approx(float(np.mean(draw == 1)), abs=0.005)
    assert float(fixed[tokenizer.DELEGATE]) == pytest.approx(float(np.mean(draw == 2)), abs=0.005)


def test_pad_logit_bias():
    assert step_lib.pad_logit_bias(0.1) == pytest.approx(np.log(10.0))
    assert step_lib.pad_logit_bias(1.0) == 0.0
    with pytest.raises(ValueError, match="pad_weight must be > 0"):
        step_lib.pad_logit_bias(0.0)
    cfg = config_lib.override(config_lib.preset("tiny"), ["train.pad_weight=0.25"])
    assert float(step_lib.Sampling.from_config(cfg).pad_bias) == pytest.approx(np.log(4.0))
    off = config_lib.override(cfg, ["serve.calibrate_pad=false"])
    assert float(step_lib.Sampling.from_config(off).pad_bias) == 0.0
    with pytest.raises(config_lib.ConfigError, match=r"serve\.calibrate_pad"):
        config_lib.validate(config_lib.override(cfg, ["train.pad_weight=0"]))


def test_microturn_samples_from_the_calibrated_logits():
    """The bias reaches the sampler (greedy: a large PAD bias silences the model, a negative one forbids
    PAD), while the returned text logits stay the model's own."""
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), list(SMALL)))
    s = cfg.stream
    params = step_lib.init_params(cfg, jax.random.key(0))
    fn = step_lib.jit_microturn(cfg)
    block = microturn_block(s, random_chunks(s, 0, 1, seed=1) * 2)
    outs = {}
    for bias in (-50.0, 0.0, 50.0):
        cache = kv_cache.init_cache(cfg.model, 2, 64)
        outs[bias], _ = fn(params, cache, block, jax.random.key(0), step_lib.Sampling(pad_bias=bias))
    assert (np.asarray(outs[50.0]["text"]) == PAD).all()
    assert (np.asarray(outs[-50.0]["text"]) != PAD).all()
    for bias in (-50.0, 50.0):
        np.testing.assert_array_equal(
            np.asarray(outs[bias]["text_logits"][:, 0]), np.asarray(outs[0.0]["text_logits"][:, 0])
        )


def test_microturn_reports_the_speak_probability_its_decision_used():
    """`speak_prob` is 1 − p(PAD) of the calibrated logits in every text slot, and the decision is exactly
    `speak_prob > speak_threshold`: at a threshold between two slots' probabilities, one speaks and the
    other does not."""
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), list(SMALL)))
    s = cfg.stream
    params = step_lib.init_params(cfg, jax.random.key(0))
    fn = step_lib.jit_microturn(cfg)
    block = microturn_block(s, random_chunks(s, 0, 1, seed=1) * 2)
    bias = 2.0
    out, _ = fn(
        params, kv_cache.init_cache(cfg.model, 2, 64), block, jax.random.key(0), step_lib.Sampling(pad_bias=bias)
    )
    logits = np.asarray(out["text_logits"], np.float64)
    logits[..., PAD] += bias
    peak = logits.max(axis=-1, keepdims=True)
    log_total = peak[..., 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    expected = 1.0 - np.exp(logits[..., PAD] - log_total)
    speak = np.asarray(out["speak_prob"])
    assert speak.shape == (2, s.text_out_slots)
    np.testing.assert_allclose(speak, expected, atol=1e-5)
    # The first slot's decision at a threshold just below and just above its own probability (the rest of
    # the block then follows from different fed-back tokens, so only slot 0 is compared).
    p0 = float(speak[0, 0])
    for threshold, speaks in ((p0 - 1e-3, True), (p0 + 1e-3, False)):
        sampling = step_lib.Sampling(pad_bias=bias, speak_threshold=threshold)
        o, _ = fn(params, kv_cache.init_cache(cfg.model, 2, 64), block, jax.random.key(0), sampling)
        assert (int(o["text"][0, 0]) != PAD) is speaks, threshold
        assert float(o["speak_prob"][0, 0]) == p0
