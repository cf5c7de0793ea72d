"""Time-aware speech: "tell me when N seconds have passed", and the model speaks up N seconds later.

The request is spoken or typed (equally often). The timer starts when the request is complete — the
clip's end, or the end of the chunk in which the typed request's last token lands — and the model's
short response starts at the chunk boundary nearest request end + N. Requests repeat while whole ones
fit; N is drawn among the values that fit.
"""

from __future__ import annotations

import dataclasses

from interaction_jax.audio.clip import Clip
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.scenarios.common import (
    EpisodeBuilder,
    Request,
    first_that_fits,
    nearest_chunk,
    pick,
    too_short,
)

NAME = "time_speak"
FIRST_START_S = (0.2, 1.5)
NEXT_REQUEST_S = (0.5, 1.5)  # from the end of the response to the next request
TYPED_PROBABILITY = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
    request: Request
    seconds: int
    target_s: float
    onset_chunk: int
    response: Clip


def _draw(b: EpisodeBuilder, start: int) -> Plan | None:
    typed = bool(b.rng.random() < TYPED_PROBABILITY)
    template = pick(b.rng, corpus.time_templates(b.ctx.split))
    response = b.model_clip(pick(b.rng, corpus.TIMER_RESPONSES))
    fitting = []
    for seconds in corpus.TIME_REQUEST_SECONDS:
        request = b.plan_request(corpus.time_request_text(template, seconds), start, typed)
        target_s = b.seconds(request.end) + seconds
        onset = nearest_chunk(target_s, b.cfg)
        if request.end <= b.total and b.model_fits(onset, response):
            fitting.append(Plan(request, seconds, target_s, onset, response))
    return pick(b.rng, fitting) if fitting else None


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, seed, ctx)
    start = b.uniform_sample(*FIRST_START_S)
    requests = []
    while (plan := first_that_fits(_draw, b, start)) is not None:
        b.place_request(plan.request)
        _, response_end = b.say_model(plan.response, plan.onset_chunk)
        requests.append(
            {
                "n": plan.seconds,
                "request_end": b.seconds(plan.request.end),
                "target_time": plan.target_s,
                "onset_chunk": plan.onset_chunk,
                "typed": plan.request.typed,
            }
        )
        start = response_end + b.samples(b.rng.uniform(*NEXT_REQUEST_S))
    if not requests:
        raise too_short(NAME, ctx, "a timer request and its response")
    b.annotate(requests=requests)
    return b.build()
