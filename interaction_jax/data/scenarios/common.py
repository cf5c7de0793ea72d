"""What every scenario shares: timing rules, laying out user speech, and the `EpisodeBuilder`.

Timing rules (stream time, S = samples per chunk, c = seconds per chunk):

- The model decides in chunk k and its speech starts at sample k·S — never mid-chunk.
- Reply rule: when the user's last speech sample lies in chunk e, the model's reply starts in chunk
  e + 1 + r, r ∈ {0, 1} drawn per reply; it never starts while the user is still talking.
- Typed text (TEXT_IN, `text_in_slots` tokens per chunk) and the model's own text requests (TEXT_OUT)
  arrive a few tokens per chunk; `text_arrival_chunk` says in which chunk the last token lands, and a
  text request counts as finished at the end of that chunk.

The builder keeps all bookkeeping in integer samples so that chunk arithmetic is exact, and converts to
seconds only for annotations and text events.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.audio.clip import Clip, Word
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import (
    Episode,
    ScenarioContext,
    TextEvent,
    chunk_samples,
    chunk_seconds,
    frame_times,
)
from interaction_jax.data.render import event_chunk
from interaction_jax.data.scenarios.scoring import last_chunk
from interaction_jax.video import scene as video_scene

T = TypeVar("T")

NOISE_LEVELS = (1e-4, 3e-3)  # background noise amplitude range of the user's microphone (log-uniform)
FADE_S = 0.010  # fade where speech is cut (a barged-in model; user speech around inserted pauses)
BEEP_S, BEEP_HZ, BEEP_RAMP_S, BEEP_AMPLITUDE = 0.150, 1000.0, 0.005, 0.3
TRIES = 6  # random draws before concluding that an exchange does not fit in what is left of an episode
# Pauses inside every spoken request, question and statement that is answered (turn_taking draws its own,
# more and longer). Without them only turn_taking's statements ever pause, so "the user went quiet after
# a short stretch of speech" would mean "answer now" in every other scenario: the opposite of
# turn_taking's lesson, for the same kind of input. With them, only a finished sentence is answered.
SPOKEN_MAX_PAUSES = 1
SPOKEN_PAUSE_S = (0.4, 1.5)


class EpisodeTooShort(ValueError):
    """The episode has no room for even one complete exchange of the scenario."""


def too_short(name: str, ctx: ScenarioContext, what: str) -> EpisodeTooShort:
    seconds = ctx.num_chunks * chunk_seconds(ctx.stream)
    return EpisodeTooShort(
        f"{name}: {ctx.num_chunks} chunks ({seconds:.1f} s) leave no room for {what}; use more chunks"
    )


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def first_that_fits(draw: Callable[..., T | None], *args: Any, tries: int = TRIES) -> T | None:
    """The first plan `draw(*args)` returns (it returns None when its random draw does not fit), or
    None after `tries` misses: a shorter sentence may still fit where the first one drawn does not."""
    for _ in range(tries):
        plan = draw(*args)
        if plan is not None:
            return plan
    return None


# ----------------------------------------------------------------------------------------------
# Chunk arithmetic


def reply_chunk(user_end_sample: int, rng: np.random.Generator, cfg: StreamConfig) -> int:
    """The reply rule: the chunk a reply to speech ending at `user_end_sample` starts in."""
    return last_chunk(user_end_sample, cfg) + 1 + int(rng.integers(0, 2))


def text_arrival_chunk(time_s: float, num_tokens: int, slots: int, cfg: StreamConfig) -> int:
    """The chunk in which the last of `num_tokens` tokens due at `time_s` lands, `slots` per chunk,
    assuming no other text is queued ahead of them."""
    return event_chunk(time_s, cfg) + math.ceil(num_tokens / slots) - 1


def nearest_chunk(time_s: float, cfg: StreamConfig) -> int:
    """The chunk whose start is nearest to `time_s` (halves round up)."""
    return math.floor(time_s / chunk_seconds(cfg) + 0.5)


def word_pieces(text: str, words: Sequence[Word]) -> list[str]:
    """The piece of `text` each timed word carries into the model's text stream, punctuation included.

    eSpeak reports no timing for some unstressed words ("the", "not", "is" …, run into a neighbour), so a
    timed word's piece runs from it up to the next timed word: an untimed word rides along with the timed
    one before it (or with the first one, at the start), and the pieces joined by spaces are `text`.
    """
    written = [(m.start(), m.group().strip(string.punctuation)) for m in re.finditer(r"\S+", text)]
    starts, index = [], 0
    for word in words:
        while index < len(written) and written[index][1] != word.text:
            index += 1
        if index == len(written):
            raise ValueError(f"timed word {word.text!r} is not in {text!r} (in order)")
        starts.append(written[index][0])
        index += 1
    bounds = [0, *starts[1:], len(text)]
    return [" ".join(text[a:b].split()) for a, b in itertools.pairwise(bounds)]


def word_tokens(pieces: Sequence[str]) -> list[tuple[int, ...]]:
    """Each piece's tokens in the model's text stream: SPEAK, the decision to start the word (one token
    against PAD, and the word boundary: no space byte follows it; `stream.py`), then the piece's bytes."""
    return [(tokenizer.SPEAK, *tokenizer.encode(p, specials=False)) for p in pieces]


# ----------------------------------------------------------------------------------------------
# Sounds


def beep(sample_rate: int) -> np.ndarray:
    """The audio cue: a short 1 kHz tone with linear ramps (no clicks), float32."""
    n = round(BEEP_S * sample_rate)
    t = np.arange(n) / sample_rate
    ramp = round(BEEP_RAMP_S * sample_rate)
    envelope = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / ramp)
    return (BEEP_AMPLITUDE * envelope * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)


def faded(audio: np.ndarray, sample_rate: int, fade_in: bool = False, fade_out: bool = True) -> np.ndarray:
    """A copy of `audio` with linear fades over FADE_S at the ends that are cuts, so a cut makes no click
    (eSpeak's words run into each other, so even a cut between two words is rarely at silence)."""
    n = min(audio.size // 2, round(FADE_S * sample_rate))
    out = audio.astype(np.float32, copy=True)
    if n and fade_in:
        out[:n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
    if n and fade_out:
        out[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# User speech laid out with pauses


@dataclasses.dataclass(frozen=True)
class Layout:
    """A user clip cut at word boundaries with silence inserted: `pieces` are (offset from the utterance
    start, clip sample from, clip sample to), in order."""

    clip: Clip
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def num_samples(self) -> int:
        offset, start, stop = self.pieces[-1]
        return offset + stop - start

    def voiced(self) -> list[tuple[int, int]]:
        """(start, end) offsets of the stretches of speech, pauses excluded."""
        return [(offset, offset + stop - start) for offset, start, stop in self.pieces]

    def pauses(self) -> list[tuple[int, int]]:
        """(start, end) offsets of the inserted pauses."""
        voiced = self.voiced()
        return [(a[1], b[0]) for a, b in itertools.pairwise(voiced)]


def lay_out(
    clip: Clip, rng: np.random.Generator, max_pauses: int = 0, pause_s: tuple[float, float] = (0.4, 2.0)
) -> Layout:
    """`clip` with 0…max_pauses pauses of pause_s seconds, each cut midway in the gap between two timed
    words, so no word is split (eSpeak's words usually touch, so that is mostly their boundary)."""
    gaps = max(0, len(clip.words) - 1)
    count = int(rng.integers(0, min(max_pauses, gaps) + 1))
    chosen = sorted(int(i) for i in rng.choice(gaps, size=count, replace=False)) if count else []
    cuts = []
    for i in chosen:
        middle = (clip.words[i].end_s + clip.words[i + 1].start_s) / 2
        cut = min(max(round(middle * clip.sample_rate), 1), clip.audio.size - 1)
        if not cuts or cut > cuts[-1]:
            cuts.append(cut)
    bounds = [0, *cuts, clip.audio.size]
    pauses = [0, *(round(rng.uniform(*pause_s) * clip.sample_rate) for _ in cuts)]
    pieces, offset = [], 0
    for (start, stop), pause in zip(itertools.pairwise(bounds), pauses, strict=True):
        offset += pause
        pieces.append((offset, start, stop))
        offset += stop - start
    return Layout(clip, tuple(pieces))


@dataclasses.dataclass(frozen=True)
class Acknowledgement:
    """The model's "okay" to a request, from chunk `onset`; its speech ends at sample `end`. Whatever the
    request asks for (the timer's response, the cue's, the first number) comes a chunk after that at the
    earliest, so the two are separate utterances."""

    clip: Clip
    onset: int
    end: int


@dataclasses.dataclass(frozen=True)
class Request:
    """A user request planned from sample `start`: spoken (`layout`) or typed (`layout` None); it is
    complete at sample `end` (the clip's end, or the end of the chunk its last typed token lands in)."""

    text: str
    start: int
    end: int
    layout: Layout | None

    @property
    def typed(self) -> bool:
        return self.layout is None


# ----------------------------------------------------------------------------------------------
# The builder


def _span(start: int, end: int, sample_rate: int) -> list[float]:
    return [start / sample_rate, end / sample_rate]


def scene_stream(seed: int, number: int) -> np.random.Generator:
    """The random stream an episode's video scene is drawn from (episode `seed` of scenario `number`)."""
    return np.random.default_rng([seed, number, 1])


def noise_floor(seed: int, number: int, num_samples: int, level: float) -> np.ndarray:
    """float32 [num_samples]: the noise of the user's microphone under episode `seed` of scenario `number`, at
    amplitude `level`, from a stream of its own (what an edit of the episode leaves silent gets it back)."""
    noise = np.random.default_rng([seed, number, 2]).standard_normal(num_samples).astype(np.float32)
    return noise * np.float32(level)


class EpisodeBuilder:
    """Accumulates one episode: user and model audio, text events, the video scene and annotations.

    Scenarios plan an exchange with the builder's clip and timing helpers, then place it; placing
    checks the shared rules (speech inside the episode, model speech on chunk boundaries and never
    overlapping itself) and records the annotations every scenario writes.
    """

    def __init__(self, name: str, number: int, seed: int, ctx: ScenarioContext):
        """Episode `seed` of scenario `name`, whose registry `number` keys the random streams."""
        self.name, self.seed, self.ctx, self.cfg = name, seed, ctx, ctx.stream
        # Separate streams for timing, scene and noise: turning video off leaves the audio unchanged.
        self.rng = np.random.default_rng([seed, number])
        self.scene_rng = scene_stream(seed, number)
        self.number = number
        self.sample_rate = self.cfg.sample_rate
        self.chunk = chunk_samples(self.cfg)
        self.total = ctx.num_chunks * self.chunk
        self.voice = pick(self.rng, corpus.user_voices(ctx.split))
        self.noise_level = float(np.exp(self.rng.uniform(*np.log(NOISE_LEVELS))))
        self.scene = None
        if ctx.sees:
            self.scene = video_scene.random_scene(self.scene_rng, self.cfg.frame_height, self.cfg.frame_width)
        self._user = np.zeros(self.total, np.float32)
        self._model = np.zeros(self.total, np.float32)
        self._user_text: list[TextEvent] = []
        self._model_text: list[TextEvent] = []
        self._user_speech: list[list[float]] = []
        self._model_spans: list[tuple[int, int]] = []
        self._user_utterances: list[dict[str, Any]] = []
        self._model_utterances: list[dict[str, Any]] = []
        self._model_lines: list[dict[str, Any]] = []  # what the model could say, in order (`could_say`)
        self._annotations: dict[str, Any] = {}

    # --- time ---------------------------------------------------------------------------------

    def samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def seconds(self, sample: int) -> float:
        return sample / self.sample_rate

    def chunk_start(self, chunk: int) -> int:
        return chunk * self.chunk

    def chunk_time(self, chunk: int) -> float:
        return self.seconds(chunk * self.chunk)

    def uniform_sample(self, low_s: float, high_s: float) -> int:
        """A sample index at a uniformly random time in [low_s, high_s] seconds."""
        return self.samples(self.rng.uniform(low_s, high_s))

    def reply_chunk(self, user_end: int) -> int:
        return reply_chunk(user_end, self.rng, self.cfg)

    def model_fits(self, onset_chunk: int, clip: Clip) -> bool:
        return self.chunk_start(onset_chunk) + clip.audio.size <= self.total

    def model_end(self, onset_chunk: int, clip: Clip) -> int:
        return self.chunk_start(onset_chunk) + clip.audio.size

    def last_onset(self, clip: Clip) -> int:
        """The last chunk the model can start `clip` in and still finish inside the episode."""
        return (self.total - clip.audio.size) // self.chunk

    def latest_user_end(self, reply: Clip) -> int:
        """The latest end sample of user speech after which `reply`, started by the reply rule whatever
        r is drawn, still fits in the episode."""
        return (self.last_onset(reply) - 1) * self.chunk

    def typed_end(self, text: str, start: int) -> int:
        """The sample at which `text`, typed from sample `start`, has fully arrived in TEXT_IN."""
        tokens = tokenizer.encode(text, specials=False)
        return self.chunk_start(
            text_arrival_chunk(self.seconds(start), len(tokens), self.cfg.text_in_slots, self.cfg) + 1
        )

    # --- clips --------------------------------------------------------------------------------

    def _checked(self, clip: Clip) -> Clip:
        if clip.sample_rate != self.sample_rate:
            raise ValueError(f"clip {clip.text!r} is at {clip.sample_rate} Hz, the stream at {self.sample_rate} Hz")
        return clip

    def user_clip(self, text: str) -> Clip:
        return self._checked(self.ctx.clips.get(text, self.voice))

    def model_clip(self, text: str) -> Clip:
        return self._checked(self.ctx.clips.get(text, corpus.MODEL_VOICE))

    # --- placing ------------------------------------------------------------------------------

    def place_user(self, layout: Layout, start: int) -> tuple[int, int]:
        """Mix a laid-out user utterance in from sample `start`; return its (start, end) samples."""
        end = start + layout.num_samples
        if start < 0 or end > self.total:
            raise ValueError(f"{self.name}: user speech [{start}, {end}) lies outside [0, {self.total})")
        size = layout.clip.audio.size
        for offset, clip_from, clip_to in layout.pieces:
            piece = faded(layout.clip.audio[clip_from:clip_to], self.sample_rate, clip_from > 0, clip_to < size)
            self._user[start + offset : start + offset + clip_to - clip_from] += piece
        self._user_speech += [_span(start + a, start + b, self.sample_rate) for a, b in layout.voiced()]
        self._user_utterances.append(
            {
                "start": self.seconds(start),
                "end": self.seconds(end),
                "text": layout.clip.text,
                "pauses": [_span(start + a, start + b, self.sample_rate) for a, b in layout.pauses()],
                "typed": False,
            }
        )
        return start, end

    def type_user(self, text: str, start: int) -> int:
        """Type `text` into TEXT_IN from sample `start`; return the sample at which it has fully arrived
        (the end of the chunk its last token lands in)."""
        tokens = tuple(tokenizer.encode(text, specials=False))
        time_s = self.seconds(start)
        end = self.typed_end(text, start)
        if end > self.total:
            raise ValueError(f"{self.name}: typed text {text!r} would still be arriving when the episode ends")
        self._user_text.append(TextEvent(time_s, tokens))
        self._user_utterances.append(
            {"start": time_s, "end": self.seconds(end), "text": text, "pauses": [], "typed": True}
        )
        return end

    def plan_request(self, text: str, start: int, typed: bool) -> Request:
        if typed:
            return Request(text, start, self.typed_end(text, start), None)
        layout = lay_out(self.user_clip(text), self.rng, SPOKEN_MAX_PAUSES, SPOKEN_PAUSE_S)
        return Request(text, start, start + layout.num_samples, layout)

    def place_request(self, request: Request) -> None:
        if request.layout is None:
            self.type_user(request.text, request.start)
        else:
            self.place_user(request.layout, request.start)

    def plan_acknowledgement(self, request: Request) -> Acknowledgement:
        """A finished request is answered at once, by the reply rule, as every finished utterance is: a
        request the model only acts on later would otherwise teach that the end of a sentence is no cue to
        speak, the opposite of turn_taking's lesson for the same kind of input."""
        clip = self.model_clip(pick(self.rng, corpus.ACKNOWLEDGEMENTS))
        onset = self.reply_chunk(request.end)
        return Acknowledgement(clip, onset, self.model_end(onset, clip))

    def after_acknowledgement(self, ack: Acknowledgement) -> int:
        """The first sample the request's own response may start at: a chunk after the "okay" ends."""
        return ack.end + self.chunk

    def say_acknowledgement(self, ack: Acknowledgement) -> None:
        self.say_model(ack.clip, ack.onset, choices=corpus.ACKNOWLEDGEMENTS)

    def add_user_tokens(self, tokens: Sequence[int], time_s: float) -> None:
        self._user_text.append(TextEvent(float(time_s), tuple(int(t) for t in tokens)))

    def add_model_tokens(self, tokens: Sequence[int], time_s: float) -> None:
        self._model_text.append(TextEvent(float(time_s), tuple(int(t) for t in tokens)))

    def add_beep(self, start: int) -> int:
        """Mix the audio cue into the user's audio from sample `start`; return its end sample."""
        tone = beep(self.sample_rate)
        if start < 0 or start + tone.size > self.total:
            raise ValueError(f"{self.name}: beep at sample {start} does not fit in the episode")
        self._user[start : start + tone.size] += tone
        return start + tone.size

    def say_model(
        self, clip: Clip, onset_chunk: int, cut: int | None = None, choices: Sequence[str] = ()
    ) -> tuple[int, int]:
        """The model says `clip` from the start of chunk `onset_chunk`, stopping at sample `cut` if given
        (with a fade); each word spoken becomes a text event at its onset, then EOT. Returns (start, end).

        `choices` are the lines the scenario drew `clip`'s line from at random ("" where it may say nothing
        instead), so that nothing the model hears tells them apart: the words CER scores the model against
        the nearest of them (`eval/behaviour.py`), the line drawn included. A cut utterance's choices are cut
        to as many words as were said of it."""
        start = self.chunk_start(onset_chunk)
        natural_end = start + clip.audio.size
        end = natural_end if cut is None else min(cut, natural_end)
        if start < 0 or end > self.total or end <= start:
            raise ValueError(f"{self.name}: model speech [{start}, {end}) lies outside [0, {self.total})")
        if any(start < b and a < end for a, b in self._model_spans):
            raise ValueError(f"{self.name}: model speech [{start}, {end}) overlaps earlier model speech")
        audio = clip.audio[: end - start]
        self._model[start:end] = audio if end == natural_end else faded(audio, self.sample_rate)
        spoken = [w for w in clip.words if start + self.samples(w.start_s) < end]
        pieces = word_pieces(clip.text, clip.words)[: len(spoken)]
        for word, tokens in zip(spoken, word_tokens(pieces), strict=True):
            self.add_model_tokens(tokens, self.seconds(start) + word.start_s)
        if end < self.total:
            self.add_model_tokens((tokenizer.EOT,), self.seconds(end))
        self._model_spans.append((start, end))
        self._model_utterances.append(
            {"start": self.seconds(start), "end": self.seconds(end), "text": clip.text, "cut": end < natural_end}
        )
        said = " ".join(pieces)
        words = len(said.split()) if end < natural_end else None
        self.could_say([said, *(" ".join(line.split()[:words]) for line in choices)], onset_chunk)
        return start, end

    def could_say(self, choices: Sequence[str], onset_chunk: int) -> None:
        """Record a line the model could say from chunk `onset_chunk`: one of `choices`, drawn at random by
        the scenario ("" where it may say nothing instead). `say_model` records each line it says; a line
        the scenario drew as unsaid is recorded here alone."""
        self._model_lines.append({"start": self.chunk_time(onset_chunk), "choices": sorted(set(choices))})

    def annotate(self, **values: Any) -> None:
        self._annotations.update(values)

    # --- the episode --------------------------------------------------------------------------

    def build(self) -> Episode:
        noise = noise_floor(self.seed, self.number, self.total, self.noise_level)
        user_audio = np.clip(self._user + noise, -1.0, 1.0).astype(np.float32)
        frames = None
        if self.ctx.sees:
            times = frame_times(self.cfg, self.ctx.num_chunks)
            frames = video_scene.render(self.scene, times, self.cfg.frame_height, self.cfg.frame_width)
        elif self.cfg.video:  # the camera is off
            shape = (len(frame_times(self.cfg, self.ctx.num_chunks)), self.cfg.frame_height, self.cfg.frame_width, 3)
            frames = np.zeros(shape, np.uint8)
        annotations = {
            "user_speech": sorted(self._user_speech),
            "model_speech": sorted(_span(a, b, self.sample_rate) for a, b in self._model_spans),
            "user_utterances": sorted(self._user_utterances, key=lambda u: u["start"]),
            "model_utterances": sorted(self._model_utterances, key=lambda u: u["start"]),
            "model_lines": sorted(self._model_lines, key=lambda u: u["start"]),
            "noise_level": self.noise_level,
            "user_voice": self.voice.name,
            **self._annotations,
        }
        return Episode(
            scenario=self.name,
            seed=self.seed,
            split=self.ctx.split,
            num_chunks=self.ctx.num_chunks,
            user_audio=user_audio,
            model_audio=self._model.copy(),
            frames=frames,
            user_text=tuple(sorted(self._user_text, key=lambda e: e.time_s)),
            model_text=tuple(sorted(self._model_text, key=lambda e: e.time_s)),
            annotations=annotations,
        )
