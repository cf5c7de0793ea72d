"""Stream one episode through the model chunk by chunk, exactly as a live session would be fed.

Open loop: chunk k's input block (the user's dMel audio, the frame's patches on frame chunks, TEXT_IN
with any scripted RESULT text) comes from the episode's rendered payload k, whatever the model said
before; the model runs free (text by the config's `Sampling` — greedy at temperature 0 — and sampled
mel), one jitted `microturn` per chunk on a batch of one, with a KV cache that holds the whole
episode. The rollout keeps the model's text ids, log-mel and dMel levels per chunk next to the
episode's own reference output (TEXT_OUT and the mel of the model voice as rendered), so the
behaviour metrics and the report can set one against the other.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np

from interaction_jax import stream
from interaction_jax.audio import vocoder
from interaction_jax.config import PATCH_SIZE, Config, StreamConfig
from interaction_jax.data import render
from interaction_jax.data.episode import Episode, chunk_samples
from interaction_jax.eval import behaviour
from interaction_jax.model import step
from interaction_jax.model.cache import init_cache

VOCODER_ITERATIONS = 8  # Griffin-Lim iterations for listening to the model (32 is the vocoder's default)

MicroturnFn = Callable[..., tuple[dict, dict]]


@functools.lru_cache(maxsize=8)
def microturn_for(cfg: Config) -> MicroturnFn:
    """`step.jit_microturn(cfg)`, built once per config and reused by every rollout of it."""
    return step.jit_microturn(cfg)


def cache_capacity(s: StreamConfig, num_chunks: int) -> int:
    """KV-cache slots an episode of `num_chunks` writes: every token of its stream (empty VIDEO_IN
    slots of the fixed serving block write nothing), i.e. `stream.window_length`."""
    return stream.window_length(s, num_chunks)


def chunk_keys(rng_seed: int, num_chunks: int) -> np.ndarray:
    """uint32 [num_chunks, 2]: the raw sampling key of each chunk, `key_data(fold_in(key(rng_seed), k))`.

    Made in one batched call and handed to `microturn` as raw key data, so the per-chunk host loop does
    no eager key arithmetic (a few dispatches per chunk, slow on a loaded CPU).
    """
    ks = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(rng_seed), np.arange(num_chunks))
    return np.asarray(jax.random.key_data(ks))


def input_block(payload: stream.ChunkPayload, s: StreamConfig) -> dict[str, np.ndarray]:
    """The `microturn` input block (batch of one) carrying one chunk's payload."""
    block = {
        "audio": np.asarray(payload.audio_in, np.uint8)[None],
        "text": np.asarray(payload.text_in, np.int32)[None],
        "active": np.ones((1,), bool),
    }
    if s.video:  # fixed shape on every chunk; microturn reads it only on frame chunks
        if payload.frame is not None:
            patches = stream.patchify(np.asarray(payload.frame, np.uint8))
        else:
            patches = np.zeros((s.patches_per_frame, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
        block["patches"] = patches[None]
    return block


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What the model said over one episode, chunk by chunk, and what the episode says it should have.

    text / reference_text: int32 [n, text_out_slots]; text_in: int32 [n, text_in_slots];
    mel / reference_mel: float32 [n, frames_per_chunk, n_mels] log10-mel; levels: uint8 dMel of `mel`.
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
    rng_seed: int = 0

    @property
    def text_onset(self) -> np.ndarray:
        """bool [n]: the model's TEXT_OUT holds a token other than PAD/EOT."""
        return behaviour.text_active(self.text)

    @property
    def reference_text_onset(self) -> np.ndarray:
        return behaviour.text_active(self.reference_text)

    @property
    def energy(self) -> np.ndarray:
        """float32 [n]: mean log10-mel of the model's audio per chunk (dMel range)."""
        return behaviour.chunk_energy(self.mel, self.stream)

    @property
    def reference_energy(self) -> np.ndarray:
        return behaviour.chunk_energy(self.reference_mel, self.stream)

    @property
    def speaking(self) -> np.ndarray:
        """bool [n]: the model's audio energy is above the speaking threshold."""
        return behaviour.audio_active(self.energy, self.stream)

    def model_audio(self, n_iter: int = VOCODER_ITERATIONS) -> np.ndarray:
        """float32 [n · chunk_samples]: the model's mel vocoded, as long as the episode."""
        return vocode(self.mel, self.stream, self.num_chunks * chunk_samples(self.stream), n_iter)


def rollout(
    cfg: Config,
    params: dict,
    episode: Episode,
    *,
    rng_seed: int = 0,
    microturn_fn: MicroturnFn | None = None,
) -> Rollout:
    """Feed `episode`'s input stream through `microturn` chunk by chunk (batch 1, free-running).

    `microturn_fn`: a jitted `microturn` for `cfg` (default: `microturn_for(cfg)`, compiled once per
    config). The rollout is a pure function of (params, episode, rng_seed): chunk k samples with
    `chunk_keys(rng_seed, n)[k]`.
    """
    s = cfg.stream
    fn = microturn_fn if microturn_fn is not None else microturn_for(cfg)
    payloads, _ = render.chunk_payloads(episode, s)
    n = len(payloads)
    capacity = cache_capacity(s, n)
    kv = init_cache(cfg.model, 1, capacity)
    sampling = step.Sampling.from_config(cfg)
    keys = chunk_keys(rng_seed, n)
    outputs = []
    for k, payload in enumerate(payloads):
        out, kv = fn(params, kv, input_block(payload, s), keys[k], sampling)
        outputs.append((out["text"], out["mel"], out["audio"]))
    outputs, length = jax.device_get((outputs, kv["length"]))
    if int(length[0]) != capacity:
        raise RuntimeError(f"the rollout wrote {int(length[0])} cache slots, the stream layout says {capacity}")
    frames = s.audio_slots * s.stack
    return Rollout(
        scenario=episode.scenario,
        seed=episode.seed,
        num_chunks=n,
        stream=s,
        text=np.stack([t[0] for t, _, _ in outputs]).astype(np.int32),
        mel=np.stack([m[0].reshape(frames, s.n_mels) for _, m, _ in outputs]).astype(np.float32),
        levels=np.stack([a[0].reshape(frames, s.n_mels) for _, _, a in outputs]).astype(np.uint8),
        text_in=np.stack([p.text_in for p in payloads]).astype(np.int32),
        reference_text=np.stack([p.text_out for p in payloads]).astype(np.int32),
        reference_mel=np.stack([p.audio_out_mel.reshape(frames, s.n_mels) for p in payloads]).astype(np.float32),
        rng_seed=rng_seed,
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
