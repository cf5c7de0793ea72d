"""Backchannel: the user holds the floor with a monologue; the model only says "mm-hm" between sentences.

Statements follow each other with 0.5–1.5 s pauses between them and up to one inside each. After a
statement, where the pause (or what is left of the episode) is long enough for it, the model (usually)
acknowledges by the reply rule and is done before the user resumes; it never takes the floor
otherwise. It stays silent in the pauses *inside* a statement, as it does in every scenario: a mid-sentence pause
sounds the same here as in turn_taking (the same lines, voices and cut), so acknowledging there would
teach the opposite of turn_taking's lesson for the same input. A sentence's end is what its voice and
words mark, and that is where people backchannel.

Annotations (beyond those every scenario writes): `backchannels` [{pause: [s, e], onset_chunk}] — the
pause runs from the last speech sample before it to the user's resumption.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.scenarios.common import EpisodeBuilder, Layout, first_that_fits, lay_out, pick, too_short
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import Metrics, any_active, mean, text_active
from interaction_jax.stream import chunk_seconds

NAME = "backchannel"
NUMBER = 1  # its place in the registry (`Scenario.number`)
PAUSE_S = (0.5, 1.5)
FIRST_START_S = (0.2, 1.0)
ACKNOWLEDGE_PROBABILITY = 0.8  # at a pause that can hold one; not every pause gets a backchannel


def _draw_statement(b: EpisodeBuilder, statements: tuple[str, ...], start: int) -> Layout | None:
    """A statement (with at most one pause inside) from `start`, or None if it runs past the end."""
    layout = lay_out(b.user_clip(pick(b.rng, statements)), b.rng, 1, PAUSE_S)
    return layout if start + layout.num_samples <= b.total else None


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    statements = corpus.user_lines("statement", ctx.split)
    # (last speech sample of a statement, the sample the user resumes at or the episode ends)
    after_statements: list[tuple[int, int]] = []
    start = b.uniform_sample(*FIRST_START_S)
    previous_end = None
    while True:
        layout = first_that_fits(_draw_statement, b, statements, start)
        if layout is None:
            break
        if previous_end is not None:
            after_statements.append((previous_end, start))
        _, previous_end = b.place_user(layout, start)
        start = previous_end + b.samples(b.rng.uniform(*PAUSE_S))
    if previous_end is None:
        raise too_short(NAME, ctx, "one statement")
    after_statements.append((previous_end, b.total))

    acknowledgements = [b.model_clip(text) for text in corpus.BACKCHANNELS]
    backchannels = []
    for pause_start, pause_end in after_statements:
        onset = b.reply_chunk(pause_start)
        fitting = [c for c in acknowledgements if b.model_end(onset, c) <= pause_end]
        choices = ["", *(c.text for c in fitting)]  # acknowledged or not by a coin the model cannot hear
        if fitting and b.rng.random() < ACKNOWLEDGE_PROBABILITY:
            b.say_model(pick(b.rng, fitting), onset, choices=choices)
            backchannels.append({"pause": [b.seconds(pause_start), b.seconds(pause_end)], "onset_chunk": onset})
        elif fitting:
            b.could_say(choices, onset)
    b.annotate(backchannels=backchannels)
    return b.build()


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """`backchannel_hit`: fraction of annotated backchannels with an active chunk in [onset_chunk − 1,
    onset_chunk + 1]."""
    flags = text_active(text)
    hits = [any_active(flags, b["onset_chunk"] - 1, b["onset_chunk"] + 1) for b in annotations.get("backchannels", [])]
    return {"backchannel_hit": mean(hits), "n_backchannels": len(hits)}


def due_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(b["onset_chunk"] * chunk_seconds(s), "backchannel due") for b in annotations.get("backchannels", [])]


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(Column("backchannel_hit", "backchannel within ±1 chunk", "pct"),),
    due_markers=due_markers,
    annotation_keys={"onset_chunk": "chunk", "pause": "time"},
)
