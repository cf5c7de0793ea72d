"""Interruption: the user barges in while the model is talking, and the model yields within a chunk.

The user says something, the model starts a long reply, and at least 0.6 s into it the user cuts in.
The model's speech stops at the end of the chunk in which the barge-in starts (cut with a fade; only
the words already begun appear in its text, then EOT), and once the interruption is over the model
answers it by the reply rule.
"""

from __future__ import annotations

import dataclasses

from interaction_jax.audio.clip import Clip
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
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

NAME = "interruption"
FIRST_START_S = (0.2, 1.0)
MIN_INTO_REPLY_S = 0.6  # the barge-in comes at least this far into the model's speech
# The barge-in starts at least one chunk plus this before the reply would end, so there is something to cut.
BEFORE_REPLY_END_S = 0.1


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
    b = EpisodeBuilder(NAME, seed, ctx)
    plan = first_that_fits(_draw, b, b.uniform_sample(*FIRST_START_S))
    if plan is None:
        raise too_short(NAME, ctx, "a statement, a reply long enough to interrupt, the interruption and its answer")
    b.place_user(plan.statement, plan.start)
    cut_chunk = plan.barge_in_start // b.chunk  # the chunk the barge-in starts in is the model's last
    cut = b.chunk_start(cut_chunk + 1)
    b.say_model(plan.reply, plan.reply_chunk, cut=cut)
    _, barge_in_end = b.place_user(plan.barge_in, plan.barge_in_start)
    b.say_model(plan.answer, b.reply_chunk(barge_in_end))
    b.annotate(barge_in=b.seconds(plan.barge_in_start), cut=b.seconds(cut), cut_chunk=cut_chunk)
    return b.build()
