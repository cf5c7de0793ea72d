"""`kernels.alignment: bitwise`: training and serving compute the same logits, bit for bit (DESIGN §6).

A training window's forward and the same tokens fed chunk by chunk through `microturn` (teacher
forced) give identical text logits with the batch-invariant kernels (interpreted on CPU), where XLA's
ops agree only to float tolerance.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream
from interaction_jax.config import ConfigError, KernelsConfig
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import kernels
from interaction_jax.model import step as step_lib
from interaction_jax.testing import random_chunks
from tests.test_model import input_block
from tests.test_train import SMALL

BASE = config_lib.override(config_lib.preset("tiny"), [*SMALL, "kernels.split_size=128", "kernels.block_kv=64"])


def _window_and_chunked_logits(cfg, num_chunks: int = 3, rows: int = 2):
    s = cfg.stream
    params = step_lib.init_params(cfg, jax.random.key(0))
    per_row = [random_chunks(s, 0, num_chunks, seed=10 + r) for r in range(rows)]
    batch = stream.stack_windows([stream.assemble_window(s, 0, chunks) for chunks in per_row])
    total = batch["kind"].shape[1]
    forward = jax.jit(lambda p, c, b: step_lib.step(p, c, b, cfg=cfg))
    hidden, _, _ = forward(params, kv_cache.init_cache(cfg.model, rows, total), batch)
    logits = np.asarray(step_lib.text_logits(params, hidden, cfg=cfg))
    out_rows, out_cols = np.nonzero(batch["kind"] == stream.Kind.TEXT_OUT)
    window = logits[out_rows, out_cols - 1].reshape(rows, num_chunks, s.text_out_slots, -1)
    microturn = step_lib.jit_microturn(cfg)
    cache = kv_cache.init_cache(cfg.model, rows, total + 8)
    chunked = []
    for k in range(num_chunks):
        block = input_block(s, [per_row[r][k] for r in range(rows)], teacher=True)
        outputs, cache = microturn(params, cache, block, jax.random.key(k), step_lib.Sampling.from_config(cfg))
        chunked.append(np.asarray(outputs["text_logits"]))
    return window, np.stack(chunked, axis=1)


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
