"""AdamW with linear warmup, cosine decay and global-norm clipping; weight decay only on matrices."""

from __future__ import annotations

import jax
import optax

from interaction_jax.config import TrainConfig
from interaction_jax.model import transformer


def learning_rate(t: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to `min_lr_ratio` of it."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=max(t.steps, t.warmup_steps + 1),
        end_value=t.learning_rate * t.min_lr_ratio,
    )


def decay_mask(params) -> dict:
    """True for the weights that take weight decay: matrices and stacked expert weights (ndim >= 2).

    Norm scales, biases and other vectors are left alone: decaying them pulls activations towards zero
    rather than regularising a mapping. Embedding tables are matrices and do decay, as in most LLM recipes.
    A scanned model's stacked layer axis does not count (`transformer.stacked_axes`): the mask is the
    unrolled model's, stacked.
    """
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim - transformer.stacked_axes(path) >= 2, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
    return optax.chain(
        clip, optax.adamw(learning_rate(t), b1=0.9, b2=0.95, weight_decay=t.weight_decay, mask=decay_mask)
    )
