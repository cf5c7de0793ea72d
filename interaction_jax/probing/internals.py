"""What the forward pass does inside, for one episode: attention weights and router choices.

`probe_episode` runs an episode's whole stream teacher-forced through `step(..., probe=True)` as
training runs a window (one window of the whole episode from an empty cache, `step.window_forward`'s
call), so token t of the stream sits in cache slot t, and returns the probe's arrays with the stream's
layout (`EpisodeInternals`). The aggregations below are pure numpy over those arrays:

- `attention_by_key_kind`: how much of the given queries' attention goes to each kind of token;
- `attention_by_lag`: how far back, in chunks, it goes;
- `router_by_kind`: which experts each kind of token is routed to.

The decision token of chunk k is the last TEXT_IN token of its input block: its hidden state predicts
the chunk's first TEXT_OUT slot (`step.microturn` decides there), so its attention is what the
decision to speak reads.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from interaction_jax import stream
from interaction_jax.config import Config, StreamConfig
from interaction_jax.data import render
from interaction_jax.data.episode import Episode
from interaction_jax.model import step as step_lib
from interaction_jax.model.cache import init_cache


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeInternals:
    """One episode's stream (T tokens, token t in cache slot t) and what the model did inside on it."""

    kind: np.ndarray  # int32 [T]: each token's `stream.Kind`
    chunk: np.ndarray  # int32 [T]: the chunk each token belongs to
    position: np.ndarray  # int32 [T]: global positions (t: the episode starts the session)
    decision_slots: np.ndarray  # int32 [num_chunks]: chunk k's decision token (the last TEXT_IN of its input)
    text_logits: np.ndarray  # float32 [T, V]: token t's logits predict token t + 1's text
    attention: np.ndarray  # float32 [L, H, T, T]: every layer's attention weights, query × key slot
    router_probs: np.ndarray  # float32 [L_moe, T, E]: each MoE layer's router softmax
    experts: np.ndarray  # int32 [L_moe, T, top_k]: the experts each token is sent to, best first
    moe_layers: np.ndarray  # int32 [L_moe]: the layer index of each row of the router arrays


@functools.partial(jax.jit, static_argnames="cfg")
def _probed_window(params: dict, batch: dict, *, cfg: Config) -> tuple[jax.Array, dict]:
    """Text logits [B, T, V] and `step`'s probe arrays of whole windows from an empty cache sized to them."""
    b, length = batch["kind"].shape
    cache = init_cache(cfg.model, b, length)
    hidden, _, aux = step_lib.step(params, cache, batch, cfg=cfg, window=True, probe=True)
    return step_lib.text_logits(params, hidden, cfg=cfg), aux["probe"]


def decision_slots(cfg: StreamConfig, num_chunks: int) -> np.ndarray:
    """int32 [num_chunks]: the index in a stream starting at chunk 0 of each chunk's last input token
    (the last TEXT_IN), whose hidden state predicts the chunk's first TEXT_OUT slot."""
    ends = [stream.chunk_start(cfg, k) + len(stream.input_kinds(cfg, k)) - 1 for k in range(num_chunks)]
    return np.asarray(ends, np.int32)


def probe_episode(cfg: Config, params: dict, episode: Episode) -> EpisodeInternals:
    """Run `episode` teacher-forced as one window from an empty cache through `step(..., probe=True)`
    (jitted: one compile per episode length) and return its `EpisodeInternals`."""
    s = cfg.stream
    (window,) = render.episode_windows(episode, s, episode.num_chunks)
    batch = {name: value[None] for name, value in window.items() if name != "loss_mask"}
    logits, probe = jax.device_get(_probed_window(params, batch, cfg=cfg))
    lengths = [stream.chunk_length(s, k) for k in range(episode.num_chunks)]
    return EpisodeInternals(
        kind=window["kind"],
        chunk=np.repeat(np.arange(episode.num_chunks, dtype=np.int32), lengths),
        position=window["position"],
        decision_slots=decision_slots(s, episode.num_chunks),
        text_logits=logits[0],
        attention=probe["attention"][:, 0],
        router_probs=probe["router_probs"][:, 0],
        experts=probe["experts"][:, 0],
        moe_layers=probe["moe_layers"],
    )


# ----------------------------------------------------------------------------------------------
# Aggregations (numpy; attention [L, H, T, S]: layer, query head, query token, key slot)


def attention_by_key_kind(
    attention: np.ndarray,
    queries: np.ndarray,
    key_kind: np.ndarray,
    *,
    n_kinds: int = stream.NUM_KINDS,
    average_heads: bool = False,
) -> np.ndarray:
    """The share of attention the query tokens `queries` [Q] give each kind of key, averaged over the
    queries: [L, H, n_kinds], or [L, n_kinds] with `average_heads`. `key_kind` int [S] is each slot's
    kind. Each (layer, head) row sums to 1, as each query's weights do."""
    rows = np.asarray(attention, np.float64)[:, :, queries]  # [L, H, Q, S]
    by_kind = (rows @ np.eye(n_kinds)[key_kind]).mean(axis=2)
    return by_kind.mean(axis=1) if average_heads else by_kind


def attention_by_lag(
    attention: np.ndarray, queries: np.ndarray, query_chunk: np.ndarray, key_chunk: np.ndarray, n_lags: int
) -> np.ndarray:
    """The share of attention the query tokens `queries` [Q] give keys 0, 1, … chunks before their own,
    averaged over heads and queries: [L, n_lags]. `query_chunk` int [Q] is each query's chunk and
    `key_chunk` int [S] each slot's; the last column pools every lag ≥ n_lags − 1, so a row sums to 1
    (keys in a later chunk than the query's, which a causal query gives no weight, count nowhere)."""
    if n_lags < 1:
        raise ValueError(f"n_lags must be >= 1, got {n_lags}")
    rows = np.asarray(attention, np.float64)[:, :, queries]  # [L, H, Q, S]
    lag = np.asarray(query_chunk)[:, None] - np.asarray(key_chunk)[None, :]  # [Q, S]
    bins = np.where(lag >= 0, np.minimum(lag, n_lags - 1), -1)
    per_lag = [np.einsum("lhqs,qs->l", rows, bins == n) for n in range(n_lags)]
    return np.stack(per_lag, axis=-1) / (rows.shape[1] * rows.shape[2])


def router_by_kind(
    experts: np.ndarray, kind: np.ndarray, n_experts: int, *, n_kinds: int = stream.NUM_KINDS
) -> np.ndarray:
    """The fraction of each kind's tokens routed to each expert, per MoE layer: [L_moe, n_kinds, E],
    from the chosen `experts` int [L_moe, T, top_k] and each token's `kind` int [T]. A token goes to
    top_k distinct experts, so a kind's row sums to top_k; NaN for a kind with no tokens."""
    routed = np.eye(n_experts)[experts].sum(axis=2)  # [L_moe, T, E]: 1 where the token went
    kinds = np.eye(n_kinds)[kind]  # [T, n_kinds]
    counts = np.einsum("lte,tn->lne", routed, kinds)
    totals = kinds.sum(axis=0)[None, :, None]
    return np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
