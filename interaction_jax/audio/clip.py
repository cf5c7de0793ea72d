"""A synthesised utterance and its word timings: what voices produce and the clip bank stores."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Word:
    """One word of synthesised speech, with its times in seconds from the start of the clip."""

    text: str
    start_s: float
    end_s: float


@dataclasses.dataclass(frozen=True)
class Clip:
    """A synthesised utterance: float32 mono samples at the stream's sample rate, and word timings."""

    text: str
    voice: str  # Voice.name of the voice that spoke it
    audio: np.ndarray  # float32 [n] in [-1, 1]
    sample_rate: int
    words: tuple[Word, ...]

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate
