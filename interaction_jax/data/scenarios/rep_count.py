"""Repetition counting: "count how many times it moves", and the model counts out loud as it sees them.

After the (spoken or typed) request, an object in the video performs N out-and-back motions, each
lasting at least 3 frame intervals so every repetition shows in 3 or more frames. After each one
completes the model says the next number word, starting in the chunk after the one carrying the first
frame that shows the completed repetition. N is as many as fit in the episode, at most 6, at least 1.
The count is only visible, so this scenario needs video.
"""

from __future__ import annotations

import dataclasses

from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext, frame_times
from interaction_jax.data.scenarios.common import EpisodeBuilder, Request, first_that_fits, pick, too_short
from interaction_jax.video import scene as video_scene

NAME = "rep_count"
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
    if request.end > b.total or not onsets:
        return None
    repetition = dataclasses.replace(scene.repetitions[-1], count=len(onsets))
    return Plan(request, repetition, tuple(onsets))


def make(seed: int, ctx: ScenarioContext) -> Episode:
    if not ctx.stream.video:
        raise ValueError("rep_count needs video (stream.video=true): the repetitions to count are only visible")
    b = EpisodeBuilder(NAME, seed, ctx)
    plan = first_that_fits(_draw, b)
    if plan is None:
        raise too_short(NAME, ctx, "a count request and one repetition counted")
    b.place_request(plan.request)
    b.scene = dataclasses.replace(b.scene, repetitions=(*b.scene.repetitions, plan.repetition))
    for word, onset in zip(corpus.NUMBER_WORDS, plan.onset_chunks, strict=False):
        b.say_model(b.model_clip(word), onset)
    rep = plan.repetition
    b.annotate(
        count=rep.count,
        completions=[rep.start_s + k * rep.period_s for k in range(1, rep.count + 1)],
        onset_chunks=list(plan.onset_chunks),
    )
    return b.build()
