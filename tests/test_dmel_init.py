"""The dMel table's ordinal initialisation (`embed.ordinal_init`): a channel's levels start out ordered,
so a model can read loudness per band from its first step (docs/results.md has the learning curves)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.config import StreamConfig
from interaction_jax.model import embed

STREAM = StreamConfig()
SHAPE = (STREAM.stack, STREAM.n_mels, STREAM.dmel_levels, 64)


def _neighbour_and_extreme_similarity(table: np.ndarray) -> tuple[float, float]:
    """Mean cosine similarity of each channel's neighbouring levels, and of its two extreme levels."""
    unit = table / np.linalg.norm(table, axis=-1, keepdims=True)
    neighbours = np.sum(unit[:, :, 1:] * unit[:, :, :-1], axis=-1).mean()
    extremes = np.sum(unit[:, :, 0] * unit[:, :, -1], axis=-1).mean()
    return float(neighbours), float(extremes)


def test_levels_start_ordered():
    n_terms = STREAM.stack * STREAM.n_mels
    table = np.asarray(embed.ordinal_init(n_terms)(jax.random.key(0), SHAPE))
    neighbours, extremes = _neighbour_and_extreme_similarity(table)
    assert neighbours > 0.6 and extremes < -0.4  # neighbours alike, the ends opposite
    # Along each channel's mean direction, the levels are in order.
    direction = table[:, :, -1] - table[:, :, 0]
    along = np.einsum("scld,scd->scl", table, direction)
    assert np.mean(np.diff(along, axis=-1) > 0) > 0.95
    # A token's embedding (the sum over channels) keeps the per-term scale of the plain init: ~unit norm.
    levels = np.random.default_rng(0).integers(0, STREAM.dmel_levels, (256, STREAM.stack, STREAM.n_mels))
    summed = table[np.arange(STREAM.stack)[:, None], np.arange(STREAM.n_mels), levels].sum(axis=(1, 2))
    assert np.mean(np.linalg.norm(summed, axis=-1)) / np.sqrt(SHAPE[-1]) == pytest.approx(1.0, rel=0.35)
    # control: independent random vectors per level have no order at all
    plain = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    plain_neighbours, plain_extremes = _neighbour_and_extreme_similarity(plain)
    assert abs(plain_neighbours) < 0.05 and abs(plain_extremes) < 0.05


def test_the_bag_uses_it():
    bag = embed.DMelBag(d_model=64, stream=STREAM)
    levels = jnp.zeros((1, 1, STREAM.stack, STREAM.n_mels), jnp.uint8)
    table = np.asarray(bag.init(jax.random.key(3), levels)["params"]["table"].value)
    neighbours, extremes = _neighbour_and_extreme_similarity(table)
    assert neighbours > 0.6 and extremes < -0.4
