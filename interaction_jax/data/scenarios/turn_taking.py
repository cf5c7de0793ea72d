"""Turn taking: the user speaks (with pauses mid-utterance), the model replies once the user is done.

The lesson is that a pause is not the end of a turn: the model waits through 0.4–2 s pauses inside an
utterance and replies only after the last word, by the reply rule. User and model alternate for as
long as whole exchanges fit; the user starts again 0.3–1.0 s after the model finishes.
"""

from __future__ import annotations

from interaction_jax.audio.clip import Clip
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.scenarios.common import EpisodeBuilder, Layout, first_that_fits, lay_out, pick, too_short

NAME = "turn_taking"
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
    b = EpisodeBuilder(NAME, seed, ctx)
    statements = corpus.user_lines("statement", ctx.split)
    start = b.uniform_sample(*FIRST_START_S)
    replies = []
    while True:
        exchange = first_that_fits(_draw_exchange, b, statements, start)
        if exchange is None:
            break
        layout, onset, reply = exchange
        _, user_end = b.place_user(layout, start)
        _, model_end = b.say_model(reply, onset)
        replies.append({"user_end": b.seconds(user_end), "onset_chunk": onset})
        start = model_end + b.samples(b.rng.uniform(*USER_RESTART_S))
    if not replies:
        raise too_short(NAME, ctx, "one utterance and its reply")
    b.annotate(replies=replies)
    return b.build()
