"""The training loss (DESIGN §10): text cross-entropy + λ·flow matching + the MoE aux losses (+ the
voice-activity projection loss when `train.vap_weight` is on, `train/vap.py`).

It runs the model through `model/step.py` only (`window_forward`, `text_logits`, `flow_loss`); the loss
weights (`train.pad_weight`, `decision_weight`, `flow_weight`, `vap_weight`, the aux weights) are
training's, so they are read here and `model/` knows nothing of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax import stream, tokenizer
from interaction_jax.config import Config
from interaction_jax.model import step as step_lib
from interaction_jax.train import vap as vap_lib


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in float32, without materialising one-hot targets."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def text_loss(ce: jax.Array, weights: jax.Array) -> jax.Array:
    """The weighted mean of per-token cross-entropies: sum(ce · w) / sum(w) (PAD targets weigh
    `train.pad_weight`, which skews the learned probabilities; see `model.step.pad_logit_bias`)."""
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def loss_fn(params: dict, batch: dict, rng: jax.Array, *, cfg: Config) -> tuple[jax.Array, dict]:
    """Training loss of a batch of windows: text CE + λ·flow + MoE aux losses (DESIGN §10).

    Each output token's payload is predicted from the hidden state of the token before it. `metrics` holds
    batch scalars plus `rows`, per-row sums [B] of the text terms (for per-task evaluation). An optional
    `batch["loss_mask"]` float32 [B, T] scales each target token's loss (0 on padding chunks past the end
    of an episode); without it every output token counts.
    """
    t = cfg.train
    length = batch["kind"].shape[1]
    hidden, aux = step_lib.window_forward(params, batch, cfg=cfg)

    logits = step_lib.text_logits(params, hidden, cfg=cfg)
    targets, weights = stream.text_targets(batch["kind"], batch["text"], t.pad_weight, t.decision_weight)
    mask = batch.get("loss_mask")
    if mask is not None:  # weights[t] scores token t+1
        weights = weights * jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    ce = cross_entropy(logits, targets)
    scored = (weights > 0) & (targets != tokenizer.PAD)  # the tokens the model should say
    correct = (jnp.argmax(logits, axis=-1) == targets) & scored

    is_out = stream.audio_out_entries(batch["kind"], batch["audio_index"])  # [B, Na]
    if mask is not None:
        entry_mask = jnp.take_along_axis(mask, jnp.clip(batch["audio_index"], 0, length - 1), axis=1)
        is_out = is_out & (entry_mask > 0)
    prev = jnp.clip(batch["audio_index"] - 1, 0, length - 1)
    cond = jnp.take_along_axis(hidden, prev[..., None], axis=1).reshape(-1, hidden.shape[-1])
    target = stream.normalize_mel(batch["audio_mel"], cfg.stream).reshape(cond.shape[0], -1)
    flow = step_lib.flow_loss(params, cond, target, is_out.reshape(-1), rng, cfg=cfg)

    load_balance = aux.get("load_balance", jnp.float32(0))
    router_z = aux.get("router_z", jnp.float32(0))
    text = text_loss(ce, weights)
    loss = text + t.flow_weight * flow + t.load_balance_weight * load_balance + t.router_z_weight * router_z
    vap = {}
    if t.vap_weight:  # off: the loss's program is the one without it
        vap = {"vap": vap_lib.projection_loss(params, hidden, batch, cfg=cfg)}
        loss = loss + t.vap_weight * vap["vap"]
    metrics = {
        "loss": loss,
        "text_ce": text,
        "text_acc": jnp.sum(correct) / jnp.maximum(jnp.sum(scored), 1),
        "flow": flow,
        "load_balance": load_balance,
        "router_z": router_z,
        **vap,
        # Per-row sums, so evaluation can aggregate by task; the scalars above are their batch totals.
        "rows": {
            "text_ce": jnp.sum(ce * weights, axis=1),
            "text_weight": jnp.sum(weights, axis=1),
            "correct": jnp.sum(correct, axis=1, dtype=jnp.int32),
            "scored": jnp.sum(scored, axis=1, dtype=jnp.int32),
        },
    }
    return loss, metrics
