"""`kernels.alignment: bitwise`: training and serving compute the same logits, bit for bit (DESIGN §6).

A training window's forward and the same tokens fed chunk by chunk through `microturn` (teacher
forced) give identical text logits with the batch-invariant kernels (interpreted on CPU), where XLA's
ops agree only to float tolerance. The MoE experts run `model.moe_dispatch=auto`: `moe_gemv` for the
few tokens of a chunk, `moe_gmm` for a window, bit-identical per token (with `ragged`, whose rows
depend on the group sizes, the tiny preset's logits still differ by ~1e-6).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.config import ConfigError, KernelsConfig
from interaction_jax.model import kernels
from interaction_jax.model import step as step_lib
from interaction_jax.testing import window_and_chunked_text_logits
from interaction_jax.train import loss as loss_lib
from tests.test_train import SMALL

BASE = config_lib.override(
    config_lib.preset("tiny"),
    [*SMALL, "model.moe_dispatch=auto", "kernels.moe_block_k=64", "kernels.split_size=128", "kernels.block_kv=64"],
)


def _window_and_chunked_logits(cfg):
    return window_and_chunked_text_logits(cfg, step_lib.init_params(cfg, jax.random.key(0)))


@pytest.mark.slow
def test_bitwise_alignment_gives_serving_the_training_logits_bit_for_bit():
    window, chunked = _window_and_chunked_logits(
        config_lib.validate(config_lib.override(BASE, ["kernels.alignment=bitwise"]))
    )
    np.testing.assert_array_equal(chunked, window)
    # The control: with XLA's ops the two agree only to float tolerance.
    window, chunked = _window_and_chunked_logits(config_lib.validate(BASE))
    np.testing.assert_allclose(chunked, window, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(chunked, window)


def test_kernel_choice_follows_the_alignment():
    assert kernels.implementation(KernelsConfig(), "attention") == "xla"
    bitwise = KernelsConfig(alignment="bitwise")
    assert {kernels.implementation(bitwise, op) for op in ("attention", "matmul", "norm")} == {"interpret"}
    assert kernels.implementation(KernelsConfig(alignment="bitwise", norm="reference"), "norm") == "reference"
    with pytest.raises(ConfigError, match=r"kernels\.matmul: alignment bitwise needs the batch-invariant kernels"):
        config_lib.validate(config_lib.override(BASE, ["kernels.alignment=bitwise", "kernels.matmul=xla"]))
    with pytest.raises(ConfigError, match=r"kernels\.split_size: 100 is not a multiple of kernels\.block_kv"):
        config_lib.validate(config_lib.override(BASE, ["kernels.split_size=100"]))
    with pytest.raises(ConfigError, match=r"kernels\.moe_block_k: 128 does not divide model\.d_model \(64\)"):
        config_lib.validate(config_lib.override(BASE, ["kernels.moe_block_k=128"]))


@functools.cache
def _dispatch_loss_and_grads(dispatch: str):
    """The loss and gradients of BASE's weights on one batch, with `model.moe_dispatch=dispatch` (the
    dense reference is computed once for both kernel dispatches)."""
    from interaction_jax.testing import random_batch

    dense, cfg = (
        config_lib.validate(config_lib.override(BASE, [f"model.moe_dispatch={d}"])) for d in ("dense", dispatch)
    )
    params = step_lib.init_params(dense, jax.random.key(0))
    batch = random_batch(dense.stream, 5, batch=2, seed=3)
    grad = jax.value_and_grad(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg)[0])
    return jax.jit(grad)(params)


@pytest.mark.slow
@pytest.mark.parametrize("dispatch", ["gemv", "gmm"])  # `auto` picks one of them: the next test
def test_moe_kernel_dispatches_agree_with_dense_and_train(dispatch):
    """The model's loss and gradients with the MoE kernels equal the dense dispatch's to float tolerance."""
    (want, want_grads), (got, got_grads) = _dispatch_loss_and_grads("dense"), _dispatch_loss_and_grads(dispatch)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-5)


def test_auto_dispatch_takes_gemv_for_a_chunk_and_gmm_for_a_window(monkeypatch):
    """`model.moe_dispatch=auto` runs moe_gemv for a serving chunk's few tokens and moe_gmm for a
    training window (a static choice, so tracing shows it: nothing is run)."""
    from interaction_jax.model import cache as kv_cache
    from interaction_jax.testing import microturn_block, random_batch, random_chunks

    calls = []
    real = {name: getattr(kernels.pallas_kernels, name) for name in ("moe_gemv_slots", "moe_gmm_slots")}
    for name in real:

        def spy(x, *args, _real=real[name], _name=name, **kwargs):
            calls.append((_name, x.shape[0]))
            return _real(x, *args, **kwargs)

        monkeypatch.setattr(kernels.pallas_kernels, name, spy)
    cfg = config_lib.validate(BASE)
    s, limit = cfg.stream, cfg.kernels.moe_gemv_max_tokens
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    batch = random_batch(s, 2, batch=1, seed=3)
    jax.eval_shape(lambda p: loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg)[0], params)
    window = batch["kind"].shape[1]
    assert window > limit and ("moe_gmm_slots", window) in calls
    assert all((name == "moe_gmm_slots") == (n > limit) for name, n in calls)

    calls.clear()
    block = microturn_block(s, random_chunks(s, 0, 1, seed=1) * 2, teacher=True)
    cache = kv_cache.init_cache(cfg.model, 2, 64)
    sampling = step_lib.Sampling.from_config(cfg)
    jax.eval_shape(lambda p: step_lib.microturn(p, cache, block, jax.random.key(0), sampling, cfg=cfg), params)
    assert calls and {name for name, _ in calls} == {"moe_gemv_slots"} and max(n for _, n in calls) <= limit


@pytest.mark.slow
def test_bitwise_training_differentiates_and_its_gradients_are_the_fast_paths():
    """The bitwise kernels train (their VJPs are XLA's): loss and gradients match `alignment: fast`
    to float tolerance, and the loss under differentiation is the kernels' forward, bit for bit."""
    from interaction_jax.testing import random_batch

    fast = config_lib.validate(BASE)
    bitwise = config_lib.validate(config_lib.override(BASE, ["kernels.alignment=bitwise"]))
    params = step_lib.init_params(fast, jax.random.key(0))
    batch = random_batch(fast.stream, 2, batch=1, seed=3)

    def loss(p, cfg):
        return loss_lib.loss_fn(p, batch, jax.random.key(1), cfg=cfg)[0]

    (want, want_grads), (got, got_grads) = (
        jax.jit(jax.value_and_grad(lambda p, cfg=cfg: loss(p, cfg)))(params) for cfg in (fast, bitwise)
    )
    assert float(jax.jit(lambda p: loss(p, bitwise))(params)) == float(got)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-5)
