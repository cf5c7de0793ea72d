"""What scoring a model's text against an episode's annotations is built from (each scenario's `metrics`).

A scenario's metrics are a pure function of (annotations, the model's TEXT_OUT ids per chunk, the stream
config), so they can be checked on hand-made rollouts and applied unchanged to the episode's own reference
output. Times are chunk indices: an event at time t lives in chunk `render.event_chunk(t)`; a stretch
ending (exclusively) at t has its last chunk `end_chunk(t)`.

A chunk is **active** (the model "says something" in it) when its TEXT_OUT holds any token other than
PAD and EOT (DELEGATE … END_DELEGATE count: they are things the model writes). The reference output is
sparse too (a word's tokens sit at its speech onset), so activity marks word onsets, not every chunk of
audible speech. An *onset* is the first active chunk in a search window; an expected onset not seen
within MISS_CHUNKS chunks counts as missed.

Episode values are means over that episode's events (`mean`: None/NaN, a value that does not apply,
skipped).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.config import StreamConfig
from interaction_jax.data.render import event_chunk
from interaction_jax.stream import chunk_samples

MISS_CHUNKS = 5  # an expected onset not seen within this many chunks counts as missed

Metrics = dict[str, Any]


def text_active(text) -> np.ndarray:
    """bool [n]: chunk k's TEXT_OUT ids (int [n, slots]) hold a token other than PAD and EOT."""
    text = np.asarray(text)
    return np.any((text != tokenizer.PAD) & (text != tokenizer.EOT), axis=-1)


def last_chunk(end_sample: int, s: StreamConfig) -> int:
    """The chunk holding the last sample of a stretch that ends (exclusively) at sample `end_sample`."""
    return (end_sample - 1) // chunk_samples(s)


def end_chunk(time_s: float, s: StreamConfig) -> int:
    """`last_chunk` of a stretch ending (exclusively) at `time_s` seconds; 0 for one that ends at 0."""
    return max(0, last_chunk(round(time_s * s.sample_rate), s))


def span_chunks(spans: Iterable[Sequence[float]], num_chunks: int, s: StreamConfig) -> np.ndarray:
    """bool [num_chunks]: chunks overlapping any [start, end) span (seconds)."""
    out = np.zeros(num_chunks, bool)
    for start, end in spans:
        if end > start:
            out[max(0, event_chunk(start, s)) : min(num_chunks, end_chunk(end, s) + 1)] = True
    return out


def first_active(flags: np.ndarray, lo: int, hi: int) -> int | None:
    """The first k in [lo, hi] (clipped to the episode) with flags[k], else None."""
    lo, hi = max(lo, 0), min(hi, len(flags) - 1)
    for k in range(lo, hi + 1):
        if flags[k]:
            return k
    return None


def last_active(flags: np.ndarray, lo: int, hi: int) -> int | None:
    """The last k in [lo, hi] (clipped to the episode) with flags[k], else None."""
    lo, hi = max(lo, 0), min(hi, len(flags) - 1)
    for k in range(hi, lo - 1, -1):
        if flags[k]:
            return k
    return None


def any_active(flags: np.ndarray, lo: int, hi: int) -> bool:
    """Whether any k in [lo, hi] (clipped to the episode) has flags[k]."""
    return first_active(flags, lo, hi) is not None


@dataclasses.dataclass(frozen=True)
class TextStream:
    """The model's text as one run of bytes, specials as single spaces, PAD dropped, with each byte's chunk."""

    data: bytes
    chunks: np.ndarray  # int [len(data)]
    ids: np.ndarray  # int [len(data)]: the token id each byte came from

    @classmethod
    def of(cls, text) -> TextStream:
        data, chunks, ids = bytearray(), [], []
        for k, row in enumerate(np.asarray(text)):
            for t in row:
                t = int(t)
                if t == tokenizer.PAD:
                    continue
                data.append(t if t < tokenizer.NUM_BYTES else ord(" "))
                chunks.append(k)
                ids.append(t)
        return cls(bytes(data), np.asarray(chunks, np.int64), np.asarray(ids, np.int64))

    def find_words(self, pattern: str) -> list[tuple[str, int]]:
        """(match, chunk of its first byte) of every whole-word, case-insensitive match of `pattern`."""
        regex = re.compile(rb"(?<![0-9a-z])(" + pattern.encode() + rb")(?![0-9a-z])", re.IGNORECASE)
        return [
            (m.group(1).decode("ascii", "replace").lower(), int(self.chunks[m.start(1)]))
            for m in regex.finditer(self.data)
        ]

    def find_phrase(self, phrase: str, lo: int, hi: int) -> int | None:
        """Chunk of the first whole-word occurrence of `phrase` starting in chunks [lo, hi], else None."""
        for _, k in self.find_words(re.escape(phrase)):
            if lo <= k <= hi:
                return k
        return None


def mean(values: Iterable[float | bool | None]) -> float | None:
    """The mean of the values that apply (None and NaN skipped), or None when none does."""
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(kept)) if kept else None


def user_utterances(annotations: dict) -> list[dict]:
    """The episode's user utterances in time order."""
    return sorted(annotations.get("user_utterances", []), key=lambda u: u["start"])
