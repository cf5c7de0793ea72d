"""Interruption: the user barges in while the model is talking, and the model yields within a chunk.

The user says something, the model starts a long reply, and at least 0.6 s into it the user cuts in.
The model's speech stops at the end of the chunk in which the barge-in starts (cut with a fade; only
the words already begun appear in its text, then EOT), and once the interruption is over the model
answers it by the reply rule.

Annotations (beyond those every scenario writes): `barge_in` (when the interruption starts), `cut` (when
the model's speech stops: the end of the barge-in's chunk), `cut_chunk` (that chunk: the last one with
the model's reply).
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
    SPOKEN_MAX_PAUSES,
    SPOKEN_PAUSE_S,
    EpisodeBuilder,
    Layout,
    first_that_fits,
    lay_out,
    pick,
    too_short,
)
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import (
    MISS_CHUNKS,
    Metrics,
    any_active,
    end_chunk,
    first_active,
    last_active,
    text_active,
    user_utterances,
)

NAME = "interruption"
NUMBER = 2  # its place in the registry (`Scenario.number`)
FIRST_START_S = (0.2, 1.0)
MIN_INTO_REPLY_S = 0.6  # the barge-in comes at least this far into the model's speech
# The barge-in starts at least one chunk plus this before the reply would end, so there is something to cut.
BEFORE_REPLY_END_S = 0.1
YIELD_CHUNKS = 2  # an interrupted model must fall silent within this many chunks after cut_chunk


@dataclasses.dataclass(frozen=True)
class Plan:
    statement: Layout
    start: int
    reply: Clip
    reply_chunk: int
    barge_in: Layout
    barge_in_start: int
    answer: Clip


def _draw(b: EpisodeBuilder, start: int) -> Plan | None:
    statement = lay_out(
        b.user_clip(pick(b.rng, corpus.user_lines("statement", b.ctx.split))), b.rng, SPOKEN_MAX_PAUSES, SPOKEN_PAUSE_S
    )
    reply_chunk = b.reply_chunk(start + statement.num_samples)
    reply = b.model_clip(pick(b.rng, corpus.LONG_REPLIES))
    barge_in = lay_out(b.user_clip(pick(b.rng, corpus.user_lines("interruption", b.ctx.split))), b.rng)
    answer = b.model_clip(pick(b.rng, corpus.INTERRUPTION_ANSWERS))
    earliest = b.chunk_start(reply_chunk) + b.samples(MIN_INTO_REPLY_S)
    latest = min(
        b.model_end(reply_chunk, reply) - b.chunk - b.samples(BEFORE_REPLY_END_S),
        b.latest_user_end(answer) - barge_in.num_samples,  # the answer must still fit after the barge-in
    )
    if latest < earliest:
        return None
    barge_in_start = int(b.rng.integers(earliest, latest + 1))
    return Plan(statement, start, reply, reply_chunk, barge_in, barge_in_start, answer)


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    plan = first_that_fits(_draw, b, b.uniform_sample(*FIRST_START_S))
    if plan is None:
        raise too_short(NAME, ctx, "a statement, a reply long enough to interrupt, the interruption and its answer")
    b.place_user(plan.statement, plan.start)
    cut_chunk = plan.barge_in_start // b.chunk  # the chunk the barge-in starts in is the model's last
    cut = b.chunk_start(cut_chunk + 1)
    b.say_model(plan.reply, plan.reply_chunk, cut=cut, choices=corpus.LONG_REPLIES)
    _, barge_in_end = b.place_user(plan.barge_in, plan.barge_in_start)
    b.say_model(plan.answer, b.reply_chunk(barge_in_end), choices=corpus.INTERRUPTION_ANSWERS)
    b.annotate(barge_in=b.seconds(plan.barge_in_start), cut=b.seconds(cut), cut_chunk=cut_chunk)
    return b.build()


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """c = cut_chunk, E = the last chunk of the barge-in: `talking_at_barge_in` = active in [reply start
    chunk, c]; `stop_latency_chunks` = max(0, last active chunk in [reply start, E] − c) (None when the
    model was not talking: nothing to yield); `yielded` = stop latency ≤ YIELD_CHUNKS;
    `answer_latency_chunks` / `answer_on_time`: the reply-rule onset of the answer after E, as for
    turn_taking."""
    flags = text_active(text)
    cut = int(annotations["cut_chunk"])
    barge_in = float(annotations["barge_in"])
    cut_replies = [u for u in annotations.get("model_utterances", []) if u.get("cut")]
    reply_start = event_chunk(cut_replies[0]["start"], s) if cut_replies else cut
    barge = [u for u in user_utterances(annotations) if abs(u["start"] - barge_in) < 1e-6]
    barge_end = end_chunk(barge[0]["end"], s) if barge else cut
    talking = any_active(flags, reply_start, cut)
    stop_latency = yielded = None
    if talking:
        last = last_active(flags, reply_start, barge_end)
        stop_latency = max(0, last - cut)
        yielded = stop_latency <= YIELD_CHUNKS
    k = first_active(flags, barge_end + 1, barge_end + MISS_CHUNKS)
    return {
        "talking_at_barge_in": float(talking),
        "yielded": None if yielded is None else float(yielded),
        "stop_latency_chunks": None if stop_latency is None else float(stop_latency),
        "answer_latency_chunks": None if k is None else float(k - barge_end),
        "answer_on_time": float(k is not None and k - barge_end <= 2),
    }


def event_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(float(annotations["barge_in"]), "barge-in")] if "barge_in" in annotations else []


def due_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(float(annotations["cut"]), "cut")] if "cut" in annotations else []


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("talking_at_barge_in", "talking at barge-in", "pct"),
        Column("yielded", "yields within 2 chunks", "pct"),
        Column("stop_latency_chunks", "stop latency", "chunks"),
        Column("answer_on_time", "answers on time", "pct"),
    ),
    event_markers=event_markers,
    due_markers=due_markers,
    annotation_keys={"barge_in": "time", "cut": "time", "cut_chunk": "chunk"},
)
