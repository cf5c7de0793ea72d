"""Voice-activity projection (Ekstedt & Skantze, "Voice Activity Projection", 2022): an auxiliary loss.

At each chunk's decision state (the hidden state that predicts the chunk's first TEXT_OUT slot,
`stream.decision_tokens`) a small head (`model.vap_horizon` logits) predicts how much the user speaks in
each of the next chunks. The targets are the window's `user_speaking` (the share of each chunk the user's
voice is on, from the episode's `user_speech`; `data/render.py`). Why: the text loss says when to reply
only at the few reply slots of an episode, while whether the user is about to go on is asked of every
chunk, pauses and turn ends alike: a dense signal for the cue that tells a turn's end from a pause.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from interaction_jax import stream
from interaction_jax.config import Config
from interaction_jax.model import step as step_lib


def vap_targets(voice: jax.Array, valid: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    """Targets and weights [B, C, horizon] from voice [B, C] ∈ [0, 1] and valid [B, C]:
    target[b, c, k] = voice[b, c + 1 + k], weighted 1 where chunks c and c + 1 + k are both in the window
    and valid, else 0 (the window's end, padding chunks)."""
    chunks = voice.shape[-1]
    voice = voice.astype(jnp.float32)
    valid = valid.astype(jnp.float32)
    beyond = jnp.zeros((*voice.shape[:-1], horizon), jnp.float32)
    ahead = jnp.arange(chunks)[:, None] + 1 + jnp.arange(horizon)[None, :]  # [C, horizon]
    targets = jnp.concatenate([voice, beyond], axis=-1)[..., ahead]
    weights = jnp.concatenate([valid, beyond], axis=-1)[..., ahead] * valid[..., None]
    return targets, weights


def vap_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """The weighted mean binary cross-entropy of logits [..., horizon] against targets in [0, 1]."""
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
    return jnp.sum(bce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def decision_states(hidden: jax.Array, kind: jax.Array, mask: jax.Array | None, num_chunks: int):
    """The hidden states at each chunk's decision token [B, C, D], and whether each chunk counts [B, C]:
    it has one (a chunk with no TEXT_OUT has none) and, with a loss mask [B, T], is not padding."""
    length = kind.shape[-1]
    index = stream.decision_tokens(kind, num_chunks)
    valid = index < length
    index = jnp.minimum(index, length - 1)
    if mask is not None:
        valid = valid & (jnp.take_along_axis(mask, index, axis=-1) > 0)
    return jnp.take_along_axis(hidden, index[..., None], axis=1), valid


def projection_loss(params: dict, hidden: jax.Array, batch: dict, *, cfg: Config) -> jax.Array:
    """The VAP loss of a batch of windows (with `user_speaking` [B, C]) whose hidden states [B, T, D]
    `window_forward` gave."""
    if "user_speaking" not in batch:
        raise KeyError(
            "train.vap_weight is on, but the batch has no 'user_speaking' (the voice-activity targets); "
            "make windows with data.render.episode_windows, which adds them"
        )
    voice = batch["user_speaking"]
    states, valid = decision_states(hidden, batch["kind"], batch.get("loss_mask"), voice.shape[-1])
    targets, weights = vap_targets(voice, valid, cfg.model.vap_horizon)
    return vap_loss(step_lib.vap_logits(params, states, cfg=cfg), targets, weights)
