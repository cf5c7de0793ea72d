"""Backchannel: the user holds the floor with a monologue; the model only says "mm-hm" in the pauses.

Statements follow each other with 0.5–1.5 s pauses between them and up to one inside each. At a pause
long enough for it, the model (usually) acknowledges by the reply rule and is done before the user
resumes; it never takes the floor otherwise, not even after the monologue ends.
"""

from __future__ import annotations

from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.scenarios.common import EpisodeBuilder, Layout, first_that_fits, lay_out, pick, too_short

NAME = "backchannel"
PAUSE_S = (0.5, 1.5)
FIRST_START_S = (0.2, 1.0)
ACKNOWLEDGE_PROBABILITY = 0.8  # at a pause that can hold one; not every pause gets a backchannel


def _draw_statement(b: EpisodeBuilder, statements: tuple[str, ...], start: int) -> Layout | None:
    """A statement (with at most one pause inside) from `start`, or None if it runs past the end."""
    layout = lay_out(b.user_clip(pick(b.rng, statements)), b.rng, 1, PAUSE_S)
    return layout if start + layout.num_samples <= b.total else None


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, seed, ctx)
    statements = corpus.user_lines("statement", ctx.split)
    pauses: list[tuple[int, int]] = []  # (last speech sample, resumption sample) of every pause
    start = b.uniform_sample(*FIRST_START_S)
    previous_end = None
    while True:
        layout = first_that_fits(_draw_statement, b, statements, start)
        if layout is None:
            break
        if previous_end is not None:
            pauses.append((previous_end, start))
        utterance_start, previous_end = b.place_user(layout, start)
        pauses += [(utterance_start + a, utterance_start + z) for a, z in layout.pauses()]
        start = previous_end + b.samples(b.rng.uniform(*PAUSE_S))
    if previous_end is None:
        raise too_short(NAME, ctx, "one statement")

    acknowledgements = [b.model_clip(text) for text in corpus.BACKCHANNELS]
    backchannels = []
    for pause_start, pause_end in sorted(pauses):
        onset = b.reply_chunk(pause_start)
        fitting = [c for c in acknowledgements if b.model_end(onset, c) <= pause_end]
        if fitting and b.rng.random() < ACKNOWLEDGE_PROBABILITY:
            b.say_model(pick(b.rng, fitting), onset)
            backchannels.append({"pause": [b.seconds(pause_start), b.seconds(pause_end)], "onset_chunk": onset})
    b.annotate(backchannels=backchannels)
    return b.build()
