"""What a scenario produces: an episode on one time line, before it is cut into stream chunks.

An episode is a pure function of (scenario, seed, context). Everything is in *stream time*: sample i
of `model_audio` is what the model outputs in the chunk that covers it, so AUDIO_OUT of chunk k is
`model_audio[k·S:(k+1)·S]` (S = samples per chunk) and the model's response to input heard in chunk k
can start, at the earliest, in the output block of chunk k. Text events carry the time at which their
first token is due; rendering puts it in the chunk covering that time and lets longer runs of tokens
spill into the following chunks' slots (`data/render.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import numpy as np

from interaction_jax.audio.clip import Clip
from interaction_jax.config import StreamConfig
from interaction_jax.stream import chunk_samples, chunk_seconds

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")


def frame_times(cfg: StreamConfig, num_chunks: int) -> np.ndarray:
    """Stream times (s) of the video frames of an episode: chunk k·video_every starts, k = 0, 1, …."""
    if not cfg.video:
        return np.zeros(0, np.float64)
    chunks = np.arange(0, num_chunks, cfg.video_every)
    return chunks * chunk_seconds(cfg)


@dataclasses.dataclass(frozen=True)
class TextEvent:
    """Token ids due at `time_s` (stream time); rendering starts them in the chunk covering that time."""

    time_s: float
    tokens: tuple[int, ...]


class ClipSource(Protocol):
    """Where scenarios get speech: the clip bank (cached) or live synthesis, same samples either way."""

    def get(self, text: str, voice: Any) -> Clip: ...


@dataclasses.dataclass(frozen=True)
class ScenarioContext:
    """Everything a scenario needs besides its seed."""

    stream: StreamConfig
    clips: ClipSource
    split: Split = "train"
    num_chunks: int = 50  # episode length in chunks (10 s at 200 ms)
    # False: the user's camera is off. With stream.video on the stream still carries frames, all black
    # (what the server shows a client that sends none), and nothing in the episode is visual.
    camera: bool = True

    @property
    def sees(self) -> bool:
        """Whether there is anything to see: the stream has video and the camera is on."""
        return self.stream.video and self.camera


@dataclasses.dataclass(frozen=True)
class Episode:
    """One synthetic full-duplex interaction, `num_chunks` chunks long.

    user_audio / model_audio: float32 [num_chunks · chunk_samples] at the stream sample rate.
    frames: uint8 [len(frame_times), H, W, 3] (frame i at chunk i·video_every), or None when video is off.
    user_text → TEXT_IN (typed text, RESULT … END_RESULT blocks); model_text → TEXT_OUT (each word at
    its speech onset, DELEGATE … END_DELEGATE requests). `annotations` is JSON-able; see
    `data/scenarios/__init__.py` for the keys every scenario writes and the ones specific to each.
    """

    scenario: str
    seed: int
    split: Split
    num_chunks: int
    user_audio: np.ndarray
    model_audio: np.ndarray
    frames: np.ndarray | None
    user_text: tuple[TextEvent, ...]
    model_text: tuple[TextEvent, ...]
    annotations: dict[str, Any]


def check_episode(ep: Episode, cfg: StreamConfig) -> Episode:
    """Raise ValueError naming the field when `ep` does not fit `cfg`; return it unchanged otherwise."""
    where = f"episode {ep.scenario}/{ep.seed}"
    n = ep.num_chunks * chunk_samples(cfg)
    for name in ("user_audio", "model_audio"):
        a = getattr(ep, name)
        if a.dtype != np.float32 or a.shape != (n,):
            raise ValueError(f"{where}: {name} is {a.dtype}{list(a.shape)}, expected float32[{n}]")
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: {name} holds non-finite samples")
    if cfg.video:
        shape = (len(frame_times(cfg, ep.num_chunks)), cfg.frame_height, cfg.frame_width, 3)
        if ep.frames is None or ep.frames.dtype != np.uint8 or ep.frames.shape != shape:
            got = None if ep.frames is None else f"{ep.frames.dtype}{list(ep.frames.shape)}"
            raise ValueError(f"{where}: frames is {got}, expected uint8{list(shape)}")
    elif ep.frames is not None:
        raise ValueError(f"{where}: frames given but video is off")
    end = ep.num_chunks * chunk_seconds(cfg)
    for name in ("user_text", "model_text"):
        for e in getattr(ep, name):
            if not 0.0 <= e.time_s < end:
                raise ValueError(f"{where}: {name} event at {e.time_s:.3f} s lies outside [0, {end:.3f}) s")
    return ep
