"""Chunk size: how does the micro-turn length (100, 200 or 400 ms) change what the model learns?

Shorter chunks let the model react sooner (it decides once per chunk) but cut the stream into more,
smaller blocks; longer ones amortise more per step. Only the chunk length changes between runs:
every run keeps the same seconds and the same tokens per second, so the windows hold the same
number of tokens (180) and each run sees the same episodes —

- 10 s episodes (`data.episode_chunks`; scenarios need ≥ 9 s) and 2 s training windows
  (`train.window_chunks`), as in the `tiny` preset;
- one video frame every 400 ms (`stream.video_every`): 400 ms chunks cannot carry the preset's 1 fps
  (1000 ms is not a multiple of 400 ms), so every run uses 2.5 fps, the nearest rate all three share
  that also keeps whole frames in a 2 s window;
- 20 text tokens per second each way (`stream.text_in_slots` / `text_out_slots`: 2, 4, 8 per chunk;
  4 at 200 ms as in the preset); audio tokens per second are fixed already (chunk_ms / 50 per chunk).
"""

from __future__ import annotations

PRESET = "tiny"
BASE = {"train.steps": 300}
SWEPT = ("stream.chunk_ms",)

CHUNK_MS = (100, 200, 400)
EPISODE_MS = 10_000
WINDOW_MS = 2_000
FRAME_MS = 400
TEXT_TOKENS_PER_S = 20


def _per_chunk(total: int, per: int, what: str) -> int:
    if total % per:
        raise ValueError(f"{what}: {total} is not a whole multiple of {per}")
    return total // per


def overrides(chunk_ms: int) -> dict[str, int]:
    """The overrides that move to `chunk_ms` while keeping seconds, frame rate and token rates."""
    text_slots = _per_chunk(TEXT_TOKENS_PER_S * chunk_ms, 1000, f"text slots of a {chunk_ms} ms chunk (× 1000)")
    return {
        "stream.chunk_ms": chunk_ms,
        "data.episode_chunks": _per_chunk(EPISODE_MS, chunk_ms, "episode ms"),
        "train.window_chunks": _per_chunk(WINDOW_MS, chunk_ms, "window ms"),
        "stream.video_every": _per_chunk(FRAME_MS, chunk_ms, "frame interval ms"),
        "stream.text_in_slots": text_slots,
        "stream.text_out_slots": text_slots,
    }


def runs():
    for chunk_ms in CHUNK_MS:
        yield overrides(chunk_ms)
