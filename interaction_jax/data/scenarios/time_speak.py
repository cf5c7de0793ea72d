"""Time-aware speech: "tell me when N seconds have passed", and the model speaks up N seconds later.

The request is spoken or typed (equally often). The timer starts when the request is complete — the
clip's end, or the end of the chunk in which the typed request's last token lands. The model acknowledges
the request by the reply rule ("okay"), and its short response starts at the chunk boundary nearest
request end + N. Requests repeat while whole ones fit; N is drawn among the values that fit (the
response a chunk after the acknowledgement at the earliest).

Annotations (beyond those every scenario writes): `requests` [{n, request_end, ack_end, target_time,
onset_chunk, typed}] — target_time = request_end + n; ack_end: when the acknowledgement's speech ends.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax.audio.clip import Clip
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.render import event_chunk
from interaction_jax.data.scenarios.common import (
    Acknowledgement,
    EpisodeBuilder,
    Request,
    first_that_fits,
    nearest_chunk,
    pick,
    too_short,
)
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import Metrics, end_chunk, first_active, mean, text_active, user_utterances
from interaction_jax.stream import chunk_seconds

NAME = "time_speak"
NUMBER = 3  # its place in the registry (`Scenario.number`)
FIRST_START_S = (0.2, 1.5)
NEXT_REQUEST_S = (0.5, 1.5)  # from the end of the response to the next request
TYPED_PROBABILITY = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
    request: Request
    acknowledgement: Acknowledgement
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
        ack = b.plan_acknowledgement(request)
        target_s = b.seconds(request.end) + seconds
        onset = nearest_chunk(target_s, b.cfg)
        after_ack = b.chunk_start(onset) >= b.after_acknowledgement(ack)
        if request.end <= b.total and after_ack and b.model_fits(onset, response):
            fitting.append(Plan(request, ack, seconds, target_s, onset, response))
    return pick(b.rng, fitting) if fitting else None


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    start = b.uniform_sample(*FIRST_START_S)
    requests = []
    while (plan := first_that_fits(_draw, b, start)) is not None:
        b.place_request(plan.request)
        b.say_acknowledgement(plan.acknowledgement)
        _, response_end = b.say_model(plan.response, plan.onset_chunk, choices=corpus.TIMER_RESPONSES)
        requests.append(
            {
                "n": plan.seconds,
                "request_end": b.seconds(plan.request.end),
                "ack_end": b.seconds(plan.acknowledgement.end),
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


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """Per request, searching from the chunk after its acknowledgement ends (`ack_end`; the request's end
    in episodes without one) up to the chunk before the next user utterance: `timer_error_s` = onset
    chunk start − target_time (signed), `timer_abs_error_s` = its absolute value (both over the requests
    answered), `timer_hit` = onset within onset_chunk ± 1, `timer_missed` = no onset at all."""
    flags = text_active(text)
    c = chunk_seconds(s)
    n = len(flags)
    utterances = user_utterances(annotations)
    errors, hits, missed = [], [], []
    for r in annotations.get("requests", []):
        lo = end_chunk(r.get("ack_end", r["request_end"]), s) + 1
        later = [u["start"] for u in utterances if u["start"] >= r["request_end"]]
        hi = event_chunk(later[0], s) - 1 if later else n - 1
        k = first_active(flags, lo, hi)
        missed.append(k is None)
        hits.append(k is not None and abs(k - r["onset_chunk"]) <= 1)
        if k is not None:
            errors.append(k * c - r["target_time"])
    return {
        "timer_abs_error_s": mean(abs(e) for e in errors),
        "timer_error_s": mean(errors),
        "timer_hit": mean(hits),
        "timer_missed": mean(missed),
        "n_requests": len(missed),
    }


def event_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(float(r["target_time"]), f"target {r['n']} s") for r in annotations.get("requests", [])]


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("timer_abs_error_s", "TimeSpeak abs error", "s"),
        Column("timer_hit", "hit ±1 chunk", "pct"),
        Column("timer_missed", "missed", "pct"),
    ),
    event_markers=event_markers,
    annotation_keys={
        "ack_end": "time",
        "n": "plain",
        "onset_chunk": "chunk",
        "request_end": "time",
        "target_time": "time",
    },
)
