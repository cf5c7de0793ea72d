"""Stream one episode through the model chunk by chunk, exactly as a live session would be fed.

Open loop: chunk k's input block (the user's dMel audio, the frame's patches on frame chunks, TEXT_IN
with any scripted RESULT text) comes from the episode's rendered payload k, whatever the model said
before; the model runs free (text by the config's `Sampling` — greedy at temperature 0 — and sampled
mel), one tick of the serving engine (`serve.engine.Engine`) per chunk, as a live session is run,
in a session whose cache row holds the whole episode. The rollout keeps the model's text ids, log-mel
and dMel levels per chunk next to the episode's own reference output (TEXT_OUT and the mel of the
model voice as rendered), so the behaviour metrics and the report can set one against the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax import stream
from interaction_jax.audio import activity, vocoder
from interaction_jax.config import Config, StreamConfig
from interaction_jax.data import render
from interaction_jax.data.episode import Episode
from interaction_jax.data.scenarios.scoring import text_active
from interaction_jax.eval import behaviour
from interaction_jax.serve.engine import ChunkInput, Engine
from interaction_jax.stream import chunk_samples

VOCODER_ITERATIONS = 8  # Griffin-Lim iterations for listening to the model (32 is the vocoder's default)


def cache_capacity(s: StreamConfig, num_chunks: int) -> int:
    """KV-cache slots an episode of `num_chunks` writes: every token of its stream (empty VIDEO_IN
    slots of the fixed serving block write nothing), i.e. `stream.window_length`."""
    return stream.window_length(s, num_chunks)


def chunk_input(payload: stream.ChunkPayload, s: StreamConfig) -> ChunkInput:
    """The engine's input for one chunk's payload (patches on frame chunks)."""
    patches = None if payload.frame is None else stream.patchify(np.asarray(payload.frame, np.uint8))
    return ChunkInput(np.asarray(payload.audio_in, np.uint8), np.asarray(payload.text_in, np.int32), patches)


def rollout_engine(cfg: Config, params: dict, num_chunks: int) -> Engine:
    """A one-session engine whose cache row holds an episode of `num_chunks` chunks."""
    return Engine(cfg, params, max_sessions=1, max_len=cache_capacity(cfg.stream, num_chunks))


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What the model said over one episode, chunk by chunk, and what the episode says it should have.

    text / reference_text: int32 [n, text_out_slots]; text_in: int32 [n, text_in_slots];
    mel / reference_mel: float32 [n, frames_per_chunk, n_mels] log10-mel; levels: uint8 dMel of `mel`;
    speak_prob: float32 [n, text_out_slots], the calibrated probability of saying anything in each text
    slot, which the speak-or-stay-silent decision compared with the threshold (`ChunkOutput.speak_prob`).
    """

    scenario: str
    seed: int
    num_chunks: int
    stream: StreamConfig
    text: np.ndarray
    mel: np.ndarray
    levels: np.ndarray
    text_in: np.ndarray
    reference_text: np.ndarray
    reference_mel: np.ndarray
    speak_prob: np.ndarray
    rng_seed: int = 0

    @property
    def text_onset(self) -> np.ndarray:
        """bool [n]: the model's TEXT_OUT holds a token other than PAD/EOT."""
        return text_active(self.text)

    @property
    def reference_text_onset(self) -> np.ndarray:
        return text_active(self.reference_text)

    @property
    def energy(self) -> np.ndarray:
        """float32 [n]: mean log10-mel of the model's audio per chunk (dMel range)."""
        return activity.chunk_energy(self.mel, self.stream)

    @property
    def reference_energy(self) -> np.ndarray:
        return activity.chunk_energy(self.reference_mel, self.stream)

    @property
    def speaking(self) -> np.ndarray:
        """bool [n]: the model's audio energy is above the speaking threshold."""
        return activity.audio_active(self.energy, self.stream)

    def metrics(self, annotations: dict) -> dict:
        """The behaviour metrics of what the model did, against the episode's `annotations` and reference."""
        return self._scored(annotations, self.text, self.energy)

    def reference_metrics(self, annotations: dict) -> dict:
        """The same metrics for the episode's own reference output (what the data itself scores)."""
        return self._scored(annotations, self.reference_text, self.reference_energy)

    def _scored(self, annotations: dict, text: np.ndarray, energy: np.ndarray) -> dict:
        return behaviour.episode_metrics(
            self.scenario,
            annotations,
            text,
            self.stream,
            reference_text=self.reference_text,
            energy=energy,
            reference_energy=self.reference_energy,
        )

    def model_audio(self, n_iter: int = VOCODER_ITERATIONS) -> np.ndarray:
        """float32 [n · chunk_samples]: the model's mel vocoded, as long as the episode."""
        return vocode(self.mel, self.stream, self.num_chunks * chunk_samples(self.stream), n_iter)


def rollout(cfg: Config, params: dict, episode: Episode, *, rng_seed: int = 0, engine: Engine | None = None) -> Rollout:
    """Feed `episode`'s input stream through the engine chunk by chunk (one session, free-running).

    `engine`: a one-session `rollout_engine` to reuse (default: a new one; the tick compiles once per
    config and cache size either way). The rollout is a pure function of (params, episode, rng_seed):
    the session samples with seed `rng_seed`, chunk k with `fold_in(key(rng_seed), k)`.
    """
    s = cfg.stream
    payloads, _ = render.chunk_payloads(episode, s)
    n = len(payloads)
    capacity = cache_capacity(s, n)
    engine = engine if engine is not None else rollout_engine(cfg, params, n)
    if engine.max_len < capacity:
        raise ValueError(f"the engine's {engine.max_len} cache slots do not hold the episode's {capacity} tokens")
    slot = engine.open(seed=rng_seed)
    try:
        outputs = [engine.tick({slot: chunk_input(p, s)})[slot] for p in payloads]
        length = int(engine.cache["length"][slot])
    finally:
        engine.close(slot)
    if length != capacity:
        raise RuntimeError(f"the rollout wrote {length} cache slots, the stream layout says {capacity}")
    frames = s.audio_slots * s.stack
    return Rollout(
        scenario=episode.scenario,
        seed=episode.seed,
        num_chunks=n,
        stream=s,
        text=np.stack([o.text for o in outputs]).astype(np.int32),
        mel=np.stack([o.mel for o in outputs]).astype(np.float32),
        levels=np.stack([o.audio.reshape(frames, s.n_mels) for o in outputs]).astype(np.uint8),
        text_in=np.stack([p.text_in for p in payloads]).astype(np.int32),
        reference_text=np.stack([p.text_out for p in payloads]).astype(np.int32),
        reference_mel=np.stack([p.audio_out_mel.reshape(frames, s.n_mels) for p in payloads]).astype(np.float32),
        rng_seed=rng_seed,
        speak_prob=np.stack([o.speak_prob for o in outputs]).astype(np.float32),
    )


def vocode(mel, s: StreamConfig, num_samples: int | None = None, n_iter: int = VOCODER_ITERATIONS) -> np.ndarray:
    """float32 waveform of per-chunk log-mel [n, frames, n_mels] (Griffin-Lim), `num_samples` long
    (default n chunks' worth; the episode's sample count). Values are clipped to the dMel range first:
    the flow head can overshoot it, and the data never goes beyond it."""
    mel = np.clip(np.asarray(mel, np.float32), s.dmel_min, s.dmel_max)
    n = mel.shape[0]
    wave = vocoder.griffin_lim(mel.reshape(-1, s.n_mels), s, n_iter=n_iter)
    num_samples = n * chunk_samples(s) if num_samples is None else num_samples
    if wave.size >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - wave.size))
