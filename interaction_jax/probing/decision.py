"""When does the model decide to speak? Its speak probability slot by slot, free-running and teacher-forced.

Every TEXT_OUT slot is one decision: say something, or stay silent (PAD). The sampler speaks when the
calibrated probability of anything but PAD, `speak_prob` = 1 − p(PAD) after the PAD correction
(`model.step.calibrated_logits`, `model.heads.speak_probability`), exceeds `serve.speak_threshold`.

- `free_running`: the episode streamed chunk by chunk through the serving engine, exactly as a live
  session (`eval.rollout`): what the model hears is the episode, what it said before is its own output.
- `teacher_forced`: the whole episode in one forward pass from an empty cache, as training sees it
  (`model.step.window_forward`): what it said before is the episode's reference output.

Both give a `DecisionCurve`: the probability in every text slot and what was said there. Where the two
differ, the model's own earlier output (not what it hears) moved its decision.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax import stream
from interaction_jax.config import Config
from interaction_jax.data import render
from interaction_jax.data.episode import Episode
from interaction_jax.eval.rollout import Rollout, rollout, rollout_engine
from interaction_jax.model import heads
from interaction_jax.model import step as step_lib
from interaction_jax.serve.engine import Engine
from interaction_jax.tokenizer import PAD


@dataclasses.dataclass(frozen=True)
class DecisionCurve:
    """The speak probability of every TEXT_OUT slot of an episode, and what was said there.

    speak_prob: float32 [n, text_out_slots]; text: int32 [n, text_out_slots] — the model's own tokens
    (free-running) or the episode's reference (teacher-forced); chunk_s: seconds per chunk.
    """

    label: str
    speak_prob: np.ndarray
    text: np.ndarray
    chunk_s: float

    @property
    def slot_times(self) -> np.ndarray:
        """float [n · slots]: the stream time each slot stands for, its chunk's span cut into equal parts
        (the slots are generated in order within the chunk's output block)."""
        n, slots = self.speak_prob.shape
        return (np.arange(n * slots) / slots) * self.chunk_s

    @property
    def said(self) -> np.ndarray:
        """bool [n, text_out_slots]: the slot holds a token other than PAD."""
        return self.text != PAD

    def chunk_prob(self) -> np.ndarray:
        """float32 [n]: the highest speak probability among each chunk's slots (the chunk's strongest urge)."""
        return self.speak_prob.max(axis=1)


def sampling(cfg: Config, **changes: float) -> step_lib.Sampling:
    """The config's sampling (`Sampling.from_config`) with `changes` (temperature=…, top_p=…,
    speak_threshold=…, pad_bias=…, flow_temperature=…) as float32 scalars, so that an engine given it runs
    the program it has already compiled."""
    return step_lib.Sampling.from_config(cfg).replace(**{k: jnp.float32(v) for k, v in changes.items()})


def free_running(
    cfg: Config,
    params: dict,
    episode: Episode,
    *,
    rng_seed: int = 0,
    sampling: step_lib.Sampling | None = None,
    engine: Engine | None = None,
    label: str = "free-running",
) -> tuple[DecisionCurve, Rollout]:
    """Stream `episode` through the serving engine (`eval.rollout.rollout`) and read its decisions.

    `sampling`: other sampling settings than the config's (see `sampling`); `engine`: a one-session
    `eval.rollout.rollout_engine` to reuse across calls (its tick compiles once). Returns the curve and
    the rollout (the model's text, mel and audio).
    """
    engine = engine if engine is not None else rollout_engine(cfg, params, episode.num_chunks)
    engine.sampling = sampling if sampling is not None else step_lib.Sampling.from_config(cfg)
    ro = rollout(cfg, params, episode, rng_seed=rng_seed, engine=engine)
    return DecisionCurve(label, ro.speak_prob, ro.text, stream.chunk_seconds(cfg.stream)), ro


@functools.lru_cache(maxsize=8)
def _window_text_logits(cfg: Config):
    """params, one whole-episode window batch → text logits [1, T, V], as training computes them."""

    def fn(params, batch):
        hidden, _ = step_lib.window_forward(params, batch, cfg=cfg)
        return step_lib.text_logits(params, hidden, cfg=cfg)

    return jax.jit(fn)


def teacher_forced(
    cfg: Config, params: dict, episode: Episode, *, pad_bias: float | None = None, label: str = "teacher-forced"
) -> DecisionCurve:
    """The speak probability of every TEXT_OUT slot with the episode's own output fed in (one window of the
    whole episode from an empty cache, as training runs it). `pad_bias`: the PAD correction (default: the
    config's, as the sampler applies it)."""
    s = cfg.stream
    (window,) = render.episode_windows(episode, s, episode.num_chunks)
    batch = {name: value[None] for name, value in window.items() if name != "loss_mask"}
    logits = np.asarray(_window_text_logits(cfg)(params, batch))[0]
    slots = np.nonzero(window["kind"] == stream.Kind.TEXT_OUT)[0]
    bias = float(step_lib.Sampling.from_config(cfg).pad_bias) if pad_bias is None else pad_bias
    predicted = step_lib.calibrated_logits(jnp.asarray(logits[slots - 1]), bias)  # slot t-1 predicts slot t
    speak = np.asarray(heads.speak_probability(predicted, PAD), np.float32)
    shape = (episode.num_chunks, s.text_out_slots)
    return DecisionCurve(label, speak.reshape(shape), window["text"][slots].reshape(shape), stream.chunk_seconds(s))
