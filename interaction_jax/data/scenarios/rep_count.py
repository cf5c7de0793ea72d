"""Repetition counting: "count how many times it moves", and the model counts out loud as it sees them.

After the (spoken or typed) request, which the model acknowledges by the reply rule ("okay"), an
object in the video performs N out-and-back motions, each
lasting at least 3 frame intervals so every repetition shows in 3 or more frames. After each one
completes the model says the next number word, starting in the chunk after the one carrying the first
frame that shows the completed repetition. N is as many as fit in the episode, at most 6, at least 1.
The count is only visible, so this scenario needs video.

Annotations (beyond those every scenario writes): `count` (N), `completions` [times the k-th repetition
completes], `onset_chunks` [when the model starts saying "one", "two", …], `ack_end` (when the
acknowledgement's speech ends).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext, frame_times
from interaction_jax.data.scenarios.common import (
    Acknowledgement,
    EpisodeBuilder,
    Request,
    first_that_fits,
    pick,
    too_short,
)
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import Metrics, TextStream, mean
from interaction_jax.video import scene as video_scene

NAME = "rep_count"
NUMBER = 5  # its place in the registry (`Scenario.number`)
FIRST_START_S = (0.2, 0.6)
TYPED_PROBABILITY = 0.5
START_AFTER_REQUEST_S = (0.0, 0.5)
# Repetition period in frame intervals: ≥ 3 so each repetition shows in ≥ 3 frames, and not much more so
# that a 10 s episode (1 fps) still fits two counts now and then.
PERIOD_FRAMES = (3.0, 3.6)
MAX_COUNT = len(corpus.NUMBER_WORDS)


@dataclasses.dataclass(frozen=True)
class Plan:
    request: Request
    acknowledgement: Acknowledgement
    repetition: video_scene.Repetition  # already trimmed to the count that fits
    onset_chunks: tuple[int, ...]  # when the model says "one", "two", …


def _count_onsets(b: EpisodeBuilder, repetition: video_scene.Repetition) -> list[int]:
    """For k = 1, 2, …: the chunk after the one carrying the first frame in which k repetitions are
    complete, as long as the k-th number word still fits in the episode."""
    times = frame_times(b.cfg, b.ctx.num_chunks)
    onsets = []
    for k, word in enumerate(corpus.NUMBER_WORDS[: repetition.count], start=1):
        shown = next((f for f, t in enumerate(times) if video_scene.repetition_phase(repetition, t)[0] >= k), None)
        if shown is None:
            break
        onset = shown * b.cfg.video_every + 1
        if not b.model_fits(onset, b.model_clip(word)):
            break
        onsets.append(onset)
    return onsets


def _draw(b: EpisodeBuilder) -> Plan | None:
    typed = bool(b.rng.random() < TYPED_PROBABILITY)
    start = b.uniform_sample(*FIRST_START_S)
    request = b.plan_request(pick(b.rng, corpus.user_lines("count_request", b.ctx.split)), start, typed)
    frame_s = b.cfg.video_every * b.chunk / b.sample_rate
    period_s = b.rng.uniform(*PERIOD_FRAMES) * frame_s
    start_s = b.seconds(request.end) + b.rng.uniform(*START_AFTER_REQUEST_S)
    # Plan the object for the largest count, then keep as many repetitions as can be counted in time.
    scene = video_scene.with_repetition(
        b.scene, b.scene_rng, start_s, period_s, MAX_COUNT, b.cfg.frame_height, b.cfg.frame_width
    )
    onsets = _count_onsets(b, scene.repetitions[-1])
    ack = b.plan_acknowledgement(request)
    if request.end > b.total or not onsets or b.chunk_start(onsets[0]) < b.after_acknowledgement(ack):
        return None
    repetition = dataclasses.replace(scene.repetitions[-1], count=len(onsets))
    return Plan(request, ack, repetition, tuple(onsets))


def make(seed: int, ctx: ScenarioContext) -> Episode:
    if not ctx.sees:
        raise ValueError(
            "rep_count needs video (stream.video=true) and the camera on: the repetitions to count are only visible"
        )
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    plan = first_that_fits(_draw, b)
    if plan is None:
        raise too_short(NAME, ctx, "a count request and one repetition counted")
    b.place_request(plan.request)
    b.say_acknowledgement(plan.acknowledgement)
    b.scene = dataclasses.replace(b.scene, repetitions=(*b.scene.repetitions, plan.repetition))
    for word, onset in zip(corpus.NUMBER_WORDS, plan.onset_chunks, strict=False):
        b.say_model(b.model_clip(word), onset)
    rep = plan.repetition
    b.annotate(
        count=rep.count,
        completions=[rep.start_s + k * rep.period_s for k in range(1, rep.count + 1)],
        onset_chunks=list(plan.onset_chunks),
        ack_end=b.seconds(plan.acknowledgement.end),
    )
    return b.build()


NUMBER_PATTERN = "|".join(corpus.NUMBER_WORDS)


def number_words(text) -> list[tuple[int, int]]:
    """(number, chunk) of every number word ("one" → 1 …) the model says, in order."""
    return [(corpus.NUMBER_WORDS.index(w) + 1, k) for w, k in TextStream.of(text).find_words(NUMBER_PATTERN)]


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """The model's text decoded (specials as spaces) and its number words ("one" … "six") found as whole
    words: `count_correct` = the last number word said is `count` (nothing said: wrong); `count_error` =
    that number − count; per expected word i, its first occurrence's chunk − onset_chunks[i] →
    `number_abs_error_chunks` (mean over the words said), `number_hit` (within ±1), `numbers_said` (the
    fraction of the expected words said at all)."""
    said = number_words(text)
    count = int(annotations["count"])
    last = said[-1][0] if said else None
    errors = []
    for i, onset in enumerate(annotations.get("onset_chunks", []), start=1):
        first = next((k for number, k in said if number == i), None)
        errors.append(None if first is None else first - int(onset))
    found = [e for e in errors if e is not None]
    return {
        "count_correct": float(last == count),
        "count_error": None if last is None else float(last - count),
        "number_abs_error_chunks": mean(abs(e) for e in found),
        "number_hit": mean(e is not None and abs(e) <= 1 for e in errors),
        "numbers_said": mean(e is not None for e in errors),
        "n_numbers": len(errors),
    }


def event_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(float(t), f"rep {i}") for i, t in enumerate(annotations.get("completions", []), 1)]


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("count_correct", "count accuracy", "count"),
        Column("number_abs_error_chunks", "number onset abs error", "chunks"),
        Column("numbers_said", "numbers said", "pct"),
    ),
    needs_video=True,
    event_markers=event_markers,
    annotation_keys={"ack_end": "time", "completions": "time", "count": "plain", "onset_chunks": "chunk"},
)
