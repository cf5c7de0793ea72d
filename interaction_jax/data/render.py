"""Episode → stream: per-chunk payloads, then training windows that match `stream.py` exactly.

Rendering is where wall time meets the token layout. Audio is analysed once per episode with the
same causal log-mel the server uses chunk by chunk, so a window's dMel tokens are exactly what a live
session would have produced for the same samples. Text events start in the chunk covering their
time; a run longer than the chunk's slots spills into the next chunks in order (a FIFO per stream),
so a word's first token sits in the chunk where its speech starts whenever the words before it have
drained — the scenarios keep speech slow enough for that, and `RenderStats` counts when it is not so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interaction_jax import stream, tokenizer
from interaction_jax.audio import features
from interaction_jax.config import StreamConfig
from interaction_jax.data.episode import Episode, TextEvent, check_episode
from interaction_jax.stream import chunk_seconds


@dataclasses.dataclass(frozen=True)
class RenderStats:
    delayed_events: int  # events whose first token landed in a later chunk than the one covering their time
    dropped_tokens: int  # tokens still queued when the episode ended


def event_chunk(time_s: float, cfg: StreamConfig) -> int:
    """The chunk whose span covers `time_s` (stream time)."""
    return int(np.floor(time_s / chunk_seconds(cfg) + 1e-9))


def place_text(
    events: Sequence[TextEvent], num_chunks: int, slots: int, cfg: StreamConfig
) -> tuple[np.ndarray, RenderStats]:
    """Pack text events into int32 [num_chunks, slots] (PAD where empty), first come first served."""
    out = np.full((num_chunks, slots), tokenizer.PAD, np.int32)
    order = sorted(range(len(events)), key=lambda i: (events[i].time_s, i))  # stable for equal times
    queue: list[int] = []
    delayed = 0
    next_event = 0
    for k in range(num_chunks):
        while next_event < len(order) and event_chunk(events[order[next_event]].time_s, cfg) <= k:
            if len(queue) >= slots:  # a full chunk's worth is ahead of it: its first token lands later
                delayed += 1
            queue.extend(events[order[next_event]].tokens)
            next_event += 1
        take, queue = queue[:slots], queue[slots:]
        out[k, : len(take)] = take
    dropped = len(queue) + sum(len(events[i].tokens) for i in order[next_event:])
    return out, RenderStats(delayed, dropped)


def _audio_tokens(wave: np.ndarray, cfg: StreamConfig, num_chunks: int) -> np.ndarray:
    """float32 log-mel of `wave` as [num_chunks, audio_slots, stack, n_mels], clipped to the dMel range."""
    logmel = np.clip(features.log_mel(wave, cfg), cfg.dmel_min, cfg.dmel_max)
    return features.to_tokens(logmel, cfg).reshape(num_chunks, cfg.audio_slots, cfg.stack, cfg.n_mels)


def chunk_payloads(ep: Episode, cfg: StreamConfig) -> tuple[list[stream.ChunkPayload], RenderStats]:
    """Every chunk of `ep` as a `stream.ChunkPayload`, and the text placement stats."""
    check_episode(ep, cfg)
    n = ep.num_chunks
    user = stream.quantize_dmel(_audio_tokens(ep.user_audio, cfg, n), cfg)
    model_mel = _audio_tokens(ep.model_audio, cfg, n)
    text_in, stats_in = place_text(ep.user_text, n, cfg.text_in_slots, cfg)
    text_out, stats_out = place_text(ep.model_text, n, cfg.text_out_slots, cfg)
    payloads = []
    for k in range(n):
        frame = ep.frames[k // cfg.video_every] if stream.chunk_has_frame(cfg, k) else None
        payloads.append(stream.ChunkPayload(user[k], text_in[k], text_out[k], model_mel[k], frame))
    stats = RenderStats(
        stats_in.delayed_events + stats_out.delayed_events, stats_in.dropped_tokens + stats_out.dropped_tokens
    )
    return payloads, stats


def silent_payload(cfg: StreamConfig, k: int) -> stream.ChunkPayload:
    """A chunk past the end of an episode: silence both ways, no text, a black frame where one is due."""
    silent_mel = np.full((cfg.audio_slots, cfg.stack, cfg.n_mels), cfg.dmel_min, np.float32)
    frame = np.zeros((cfg.frame_height, cfg.frame_width, 3), np.uint8) if stream.chunk_has_frame(cfg, k) else None
    return stream.ChunkPayload(
        audio_in=stream.quantize_dmel(silent_mel, cfg),
        text_in=np.full(cfg.text_in_slots, tokenizer.PAD, np.int32),
        text_out=np.full(cfg.text_out_slots, tokenizer.PAD, np.int32),
        audio_out_mel=silent_mel,
        frame=frame,
    )


def num_windows(num_chunks: int, window_chunks: int) -> int:
    return -(-num_chunks // window_chunks)


def windows(
    payloads: Sequence[stream.ChunkPayload],
    cfg: StreamConfig,
    window_chunks: int,
    user_speaking: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Cut an episode's payloads into windows of `window_chunks` chunks starting at chunk 0.

    The last window is padded with `silent_payload` chunks; `loss_mask` float32 [T] is 1 on the
    episode's tokens and 0 on the padding, so padding teaches nothing. Each window is an
    `stream.assemble_window` dict plus `loss_mask`, at the window's global positions. With `user_speaking`
    (float32 [len(payloads)], how much of each chunk the user speaks) each window holds its chunks'
    share as `user_speaking` float32 [window_chunks] (0 on padding): the voice-activity targets
    (`train/vap.py`).
    """
    if window_chunks <= 0:
        raise ValueError(f"window_chunks must be positive, got {window_chunks}")
    if cfg.video and window_chunks % cfg.video_every:
        raise ValueError(
            f"window_chunks={window_chunks} is not a multiple of video_every={cfg.video_every}; "
            "windows would differ in length"
        )
    n = len(payloads)
    if user_speaking is not None and np.shape(user_speaking) != (n,):
        raise ValueError(f"user_speaking has shape {np.shape(user_speaking)}, expected one value per chunk: ({n},)")
    out = []
    for w in range(num_windows(n, window_chunks)):
        start = w * window_chunks
        chunks = [payloads[k] if k < n else silent_payload(cfg, k) for k in range(start, start + window_chunks)]
        window = stream.assemble_window(cfg, start, chunks)
        real = min(n - start, window_chunks)
        mask = np.zeros(stream.window_length(cfg, window_chunks), np.float32)
        mask[: stream.chunk_start(cfg, start + real) - stream.chunk_start(cfg, start)] = 1.0
        window["loss_mask"] = mask
        if user_speaking is not None:
            window["user_speaking"] = np.zeros(window_chunks, np.float32)
            window["user_speaking"][:real] = user_speaking[start : start + real]
        out.append(window)
    return out


def voice_by_chunk(spans: Sequence[Sequence[float]], num_chunks: int, cfg: StreamConfig) -> np.ndarray:
    """float32 [num_chunks]: the share of each chunk's time that the [start, end] spans (seconds) cover."""
    edges = np.arange(num_chunks + 1) * chunk_seconds(cfg)
    covered = np.zeros(num_chunks, np.float64)
    for start, end in spans:
        covered += np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0.0, None)
    return np.clip(covered / chunk_seconds(cfg), 0.0, 1.0).astype(np.float32)


def episode_windows(ep: Episode, cfg: StreamConfig, window_chunks: int) -> list[dict[str, np.ndarray]]:
    """`windows(chunk_payloads(ep))`: the training windows of one episode, with `user_speaking` from its
    `user_speech` annotation (`voice_by_chunk`; every scenario writes it, an episode made by hand may not)."""
    payloads, _ = chunk_payloads(ep, cfg)
    spans = ep.annotations.get("user_speech")
    speaking = None if spans is None else voice_by_chunk(spans, ep.num_chunks, cfg)
    return windows(payloads, cfg, window_chunks, user_speaking=speaking)
