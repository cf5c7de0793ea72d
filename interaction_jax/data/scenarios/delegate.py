"""Delegation: the user asks what the model cannot know; it asks a background helper and relays the answer.

The user asks an arithmetic question or the time of day (each episode has its own clock). By the reply
rule the model writes DELEGATE + a compact request ("17+25", "time") + END_DELEGATE into its text, and
half the time says "let me check" once the request has been written. The result comes back in TEXT_IN
as RESULT + answer + END_RESULT 0.4–3 s after the request's last token, and the model says the answer
as soon as it has fully arrived and the user is not talking: in about half the episodes the user says
something else while waiting, and the answer then waits for it by the reply rule.

Annotations (beyond those every scenario writes): `delegations` [{question, request, answer,
request_chunk, result_chunk, onset_chunk, let_me_check, interjection}] — request_chunk: when DELEGATE is
written; result_chunk: the chunk the RESULT event is due in; onset_chunk: when the model starts saying
the answer; let_me_check / interjection: whether the model said "let me check" and whether the user
spoke while it waited.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from interaction_jax import tokenizer
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
    text_arrival_chunk,
    too_short,
)
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import Metrics, TextStream, mean
from interaction_jax.stream import chunk_seconds

NAME = "delegate"
NUMBER = 6  # its place in the registry (`Scenario.number`)
FIRST_START_S = (0.2, 1.0)
TIME_QUESTION_PROBABILITY = 1 / 3
LET_ME_CHECK_PROBABILITY = 0.5
RESULT_DELAY_S = (0.4, 3.0)  # from the end of the chunk holding the request's last token
INTERJECTION_PROBABILITY = 0.5  # the user says something else while the answer is pending
INTERJECTION_AFTER_S = 0.3  # the interjection starts at least this long after the model went quiet
NEXT_QUESTION_S = (0.5, 1.5)


@dataclasses.dataclass(frozen=True)
class Plan:
    question: Layout
    start: int
    request: str
    answer: str
    request_chunk: int
    let_me_check: Clip | None
    let_me_check_chunk: int  # the chunk after the one the request's last token lands in
    result_sample: int
    interjection: Layout | None
    interjection_start: int
    answer_clip: Clip
    onset_chunk: int

    @property
    def request_tokens(self) -> tuple[int, ...]:
        return (tokenizer.DELEGATE, *tokenizer.encode(self.request, specials=False), tokenizer.END_DELEGATE)

    @property
    def result_tokens(self) -> tuple[int, ...]:
        return (tokenizer.RESULT, *tokenizer.encode(self.answer, specials=False), tokenizer.END_RESULT)


def _question(b: EpisodeBuilder) -> tuple[str, str, str]:
    """(question, compact request, answer) for this split; the time of day is drawn per question."""
    if b.rng.random() < TIME_QUESTION_PROBABILITY:
        return corpus.time_question(b.ctx.split), "time", pick(b.rng, corpus.CLOCK_TIMES)
    a, c = pick(b.rng, corpus.addition_operands(b.ctx.split))
    return corpus.addition_question(a, c), f"{a}+{c}", str(a + c)


def _draw(b: EpisodeBuilder, start: int) -> Plan | None:
    question_text, request, answer = _question(b)
    question = lay_out(b.user_clip(question_text), b.rng, SPOKEN_MAX_PAUSES, SPOKEN_PAUSE_S)
    request_chunk = b.reply_chunk(start + question.num_samples)
    request_tokens = 2 + len(tokenizer.encode(request, specials=False))
    request_done = b.chunk_start(
        text_arrival_chunk(b.chunk_time(request_chunk), request_tokens, b.cfg.text_out_slots, b.cfg) + 1
    )
    # "let me check" waits until the request's tokens have drained, so its words' text is not delayed.
    let_me_check = b.model_clip(corpus.LET_ME_CHECK) if b.rng.random() < LET_ME_CHECK_PROBABILITY else None
    let_me_check_chunk = request_done // b.chunk
    model_quiet = b.model_end(let_me_check_chunk, let_me_check) if let_me_check else request_done
    result_sample = request_done + b.samples(b.rng.uniform(*RESULT_DELAY_S))
    result_tokens = 2 + len(tokenizer.encode(answer, specials=False))
    result_in = text_arrival_chunk(b.seconds(result_sample), result_tokens, b.cfg.text_in_slots, b.cfg)
    onset = max(result_in + 1, math.ceil(model_quiet / b.chunk))
    interjection, interjection_start = None, 0
    earliest_interjection = model_quiet + b.samples(INTERJECTION_AFTER_S)
    if b.rng.random() < INTERJECTION_PROBABILITY and earliest_interjection < b.chunk_start(onset):
        # It starts before the answer would have, so the answer has to wait for it.
        interjection_start = int(b.rng.integers(earliest_interjection, b.chunk_start(onset)))
        statement = pick(b.rng, corpus.user_lines("statement", b.ctx.split))
        interjection = lay_out(b.user_clip(statement), b.rng, 1, (0.4, 1.0))
        onset = max(onset, b.reply_chunk(interjection_start + interjection.num_samples))
    answer_clip = b.model_clip(corpus.delegate_answer_line(answer))
    if not b.model_fits(onset, answer_clip):
        return None
    return Plan(
        question,
        start,
        request,
        answer,
        request_chunk,
        let_me_check,
        let_me_check_chunk,
        result_sample,
        interjection,
        interjection_start,
        answer_clip,
        onset,
    )


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    start = b.uniform_sample(*FIRST_START_S)
    delegations = []
    while (plan := first_that_fits(_draw, b, start)) is not None:
        b.place_user(plan.question, plan.start)
        request_time = b.chunk_time(plan.request_chunk)
        b.add_model_tokens(plan.request_tokens, request_time)
        if plan.let_me_check is not None:  # said in half the delegations, by a coin the model cannot hear
            b.say_model(plan.let_me_check, plan.let_me_check_chunk, choices=(corpus.LET_ME_CHECK, ""))
        else:
            b.could_say((corpus.LET_ME_CHECK, ""), plan.let_me_check_chunk)
        result_time = b.seconds(plan.result_sample)
        b.add_user_tokens(plan.result_tokens, result_time)
        if plan.interjection is not None:
            b.place_user(plan.interjection, plan.interjection_start)
        _, answer_end = b.say_model(plan.answer_clip, plan.onset_chunk)
        delegations.append(
            {
                "question": plan.question.clip.text,
                "request": plan.request,
                "answer": plan.answer,
                "request_chunk": plan.request_chunk,
                "result_chunk": event_chunk(result_time, b.cfg),
                "onset_chunk": plan.onset_chunk,
                "let_me_check": plan.let_me_check is not None,
                "interjection": plan.interjection is not None,
            }
        )
        start = answer_end + b.samples(b.rng.uniform(*NEXT_QUESTION_S))
    if not delegations:
        raise too_short(NAME, ctx, "a question, the delegated request, its result and the answer")
    b.annotate(delegations=delegations)
    return b.build()


def _delegate_request(stream: TextStream, lo: int, hi: int) -> tuple[int | None, str | None]:
    """(chunk, request text) of the first DELEGATE written in chunks [lo, hi]; the text is None when what
    follows it is not a request by the session's rule (`tokenizer.RequestReader`)."""
    for i in np.flatnonzero(stream.ids == tokenizer.DELEGATE):
        if lo <= stream.chunks[i] <= hi:
            reader = tokenizer.RequestReader()
            reader.feed(tokenizer.DELEGATE)
            for j in (int(j) for j in stream.ids[i + 1 :]):
                taken, request = reader.feed(j)
                if request is not None:
                    return int(stream.chunks[i]), request
                if not taken or j == tokenizer.DELEGATE:  # it was not a request
                    break
            return int(stream.chunks[i]), None
    return None, None


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """Per delegation: `delegate_hit` = a DELEGATE token within request_chunk ± 2; `request_exact` = the
    text up to the next END_DELEGATE is exactly the annotated request; `answer_said` = the answer (e.g.
    "22", "3:15") said as a whole word from result_chunk until the next delegation's request_chunk;
    `answer_delay_chunks` = its chunk − result_chunk."""
    n = len(np.asarray(text))
    stream = TextStream.of(text)
    delegations = sorted(annotations.get("delegations", []), key=lambda d: d["request_chunk"])
    hits, exact, said, delays = [], [], [], []
    for i, d in enumerate(delegations):
        rc = int(d["request_chunk"])
        chunk, request = _delegate_request(stream, rc - 2, rc + 2)
        hits.append(chunk is not None)
        exact.append(request == d["request"])
        hi = int(delegations[i + 1]["request_chunk"]) - 1 if i + 1 < len(delegations) else n - 1
        k = stream.find_phrase(str(d["answer"]), int(d["result_chunk"]), hi)
        said.append(k is not None)
        if k is not None:
            delays.append(k - int(d["result_chunk"]))
    return {
        "delegate_hit": mean(hits),
        "request_exact": mean(exact),
        "answer_said": mean(said),
        "answer_delay_chunks": mean(delays),
        "n_delegations": len(hits),
    }


def due_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    c = chunk_seconds(s)
    marks = []
    for d in annotations.get("delegations", []):
        marks += [(d["request_chunk"] * c, "delegate due"), (d["result_chunk"] * c, "result")]
        marks.append((d["onset_chunk"] * c, "answer due"))
    return marks


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("delegate_hit", "DELEGATE within ±2 chunks", "pct"),
        Column("request_exact", "exact request", "pct"),
        Column("answer_said", "answer said", "pct"),
        Column("answer_delay_chunks", "answer after result", "chunks"),
    ),
    due_markers=due_markers,
    annotation_keys={"onset_chunk": "chunk", "request_chunk": "chunk", "result_chunk": "chunk"},
)
