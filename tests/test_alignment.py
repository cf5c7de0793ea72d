"""`kernels.alignment: bitwise`: training and serving compute the same logits, bit for bit (DESIGN §6).

A training window's forward and the same tokens fed chunk by chunk through `microturn` (teacher
forced) give identical text logits with the batch-invariant kernels (interpreted on CPU), where XLA's
ops agree only to float tolerance. The MoE experts are not under the kernels yet (the MoE kernels
issue): these tests use the dense dispatch, whose per-token einsum keeps rows apart here; with the
ragged dispatch (`ragged_dot`) the tiny preset's logits still differ by ~1e-6.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.config import ConfigError, KernelsConfig
from interaction_jax.model import kernels
from interaction_jax.model import step as step_lib
from interaction_jax.testing import window_and_chunked_text_logits
from tests.test_train import SMALL

BASE = config_lib.override(
    config_lib.preset("tiny"), [*SMALL, "model.moe_dispatch=dense", "kernels.split_size=128", "kernels.block_kv=64"]
)


def _window_and_chunked_logits(cfg):
    return window_and_chunked_text_logits(cfg, step_lib.init_params(cfg, jax.random.key(0)))


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
