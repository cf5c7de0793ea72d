"""Turn taking: the user speaks (with pauses mid-utterance), the model replies once the user is done.

The lesson is that a pause is not the end of a turn: the model waits through 0.4–2 s pauses inside an
utterance and replies only after the last word, by the reply rule. User and model alternate for as
long as whole exchanges fit; the user starts again 0.3–1.0 s after the model finishes.

Annotations (beyond those every scenario writes): `replies` [{user_end, onset_chunk}], one per user utterance.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.audio.clip import Clip
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.render import event_chunk
from interaction_jax.data.scenarios.common import EpisodeBuilder, Layout, first_that_fits, lay_out, pick, too_short
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import (
    MISS_CHUNKS,
    Metrics,
    any_active,
    end_chunk,
    first_active,
    mean,
    text_active,
    user_utterances,
)
from interaction_jax.stream import chunk_seconds

NAME = "turn_taking"
NUMBER = 0  # its place in the registry (`Scenario.number`)
MAX_PAUSES = 2
PAUSE_S = (0.4, 2.0)
FIRST_START_S = (0.2, 1.0)
USER_RESTART_S = (0.3, 1.0)


def _draw_exchange(b: EpisodeBuilder, statements: tuple[str, ...], start: int) -> tuple[Layout, int, Clip] | None:
    """A user utterance from `start` and the reply to it, or None if they do not both fit."""
    layout = lay_out(b.user_clip(pick(b.rng, statements)), b.rng, MAX_PAUSES, PAUSE_S)
    user_end = start + layout.num_samples
    onset = b.reply_chunk(user_end)
    reply = b.model_clip(pick(b.rng, corpus.REPLIES))
    return (layout, onset, reply) if user_end <= b.total and b.model_fits(onset, reply) else None


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    statements = corpus.user_lines("statement", ctx.split)
    start = b.uniform_sample(*FIRST_START_S)
    replies = []
    while True:
        exchange = first_that_fits(_draw_exchange, b, statements, start)
        if exchange is None:
            break
        layout, onset, reply = exchange
        _, user_end = b.place_user(layout, start)
        _, model_end = b.say_model(reply, onset, choices=corpus.REPLIES)
        replies.append({"user_end": b.seconds(user_end), "onset_chunk": onset})
        start = model_end + b.samples(b.rng.uniform(*USER_RESTART_S))
    if not replies:
        raise too_short(NAME, ctx, "one utterance and its reply")
    b.annotate(replies=replies)
    return b.build()


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """Per reply (e = the last chunk of the user's utterance): `reply_latency_chunks` = onset − e for the
    first active chunk in [e+1, e+MISS_CHUNKS] (the data's rule: 1 or 2); `reply_latency_s` = onset chunk
    start − user_end (FD-bench style, seconds); `reply_on_time` = onset in [e+1, e+2]; `reply_missed` = no
    onset in the window. `pause_false_start`: fraction of mid-utterance pauses in which the model is active
    between the chunk after the pause starts and the chunk the user resumes in (taking a pause for the end
    of the turn; the data: 0)."""
    flags = text_active(text)
    c = chunk_seconds(s)
    latency, latency_s, on_time, missed = [], [], [], []
    for reply in annotations.get("replies", []):
        e = end_chunk(reply["user_end"], s)
        k = first_active(flags, e + 1, e + MISS_CHUNKS)
        missed.append(k is None)
        on_time.append(k is not None and k - e <= 2)
        if k is not None:
            latency.append(k - e)
            latency_s.append(k * c - reply["user_end"])
    pause_starts = []
    for u in user_utterances(annotations):
        for start, end in u.get("pauses", []):
            pause_starts.append(any_active(flags, end_chunk(start, s) + 1, event_chunk(end, s)))
    return {
        "reply_latency_chunks": mean(latency),
        "reply_latency_s": mean(latency_s),
        "reply_on_time": mean(on_time),
        "reply_missed": mean(missed),
        "pause_false_start": mean(pause_starts),
        "n_replies": len(missed),
        "n_pauses": len(pause_starts),
    }


def due_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(r["onset_chunk"] * chunk_seconds(s), "reply due") for r in annotations.get("replies", [])]


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("reply_latency_chunks", "reply onset", "chunks"),
        Column("reply_latency_s", "reply latency", "s"),
        Column("reply_on_time", "on time (1–2 chunks)", "pct"),
        Column("reply_missed", "missed", "pct"),
        Column("pause_false_start", "speaks in mid-turn pauses", "pct"),
    ),
    due_markers=due_markers,
    annotation_keys={"onset_chunk": "chunk", "user_end": "time"},
)
