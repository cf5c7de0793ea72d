"""The seven interaction scenarios: `make_episode(name, seed, ctx)` builds one checked `Episode`.

Each scenario is `make(seed, ctx) -> Episode`, a pure function of (seed, ctx); `SCENARIOS` maps the
names of `config.SCENARIOS` to them. Shared rules (reply timing, chunk-aligned model speech, noise,
video background) live in `common.py`; the corpus they draw from in `data/corpus.py`.

Episodes must be long enough for a whole exchange: at `MIN_EPISODE_SECONDS` (9 s, 45 chunks of 200 ms)
every scenario fits; shorter ones raise `EpisodeTooShort` when nothing fits (interruption, the longest
exchange, starts to fail below about 8 s). Longer episodes hold several exchanges.

Annotations (JSON-able; times in stream seconds, chunk indices as ints). Every scenario writes:

- `user_speech`: [[start, end], …] voiced stretches of the user, pauses excluded (typed text is not speech).
- `model_speech`: [[start, end], …] the model's utterances as spoken (a cut one ends at the cut).
- `user_utterances`: [{start, end, text, pauses: [[s, e], …], typed}] — for typed text, start is when
  typing begins and end is the end of the chunk in which its last token lands.
- `model_utterances`: [{start, end, text, cut}].
- `noise_level`: amplitude of the user's background noise; `user_voice`: the user's Voice.name.

And each its own:

- turn_taking: `replies` [{user_end, onset_chunk}] — one per user utterance.
- backchannel: `backchannels` [{pause: [s, e], onset_chunk}] — pause from the last speech sample
  before it to the user's resumption.
- interruption: `barge_in` (when the interruption starts), `cut` (when the model's speech stops: the
  end of the barge-in's chunk), `cut_chunk` (that chunk: the last one with the model's reply).
- time_speak: `requests` [{n, request_end, target_time, onset_chunk, typed}] — target_time = request_end + n.
- cue_speak: `cues` [{kind: "visual" | "audio", time, perceived_chunk, onset_chunk}] — time is the frame
  time the red square appears at, or the beep's start; onset_chunk = perceived_chunk + 1.
- rep_count: `count` (N), `completions` [times the k-th repetition completes], `onset_chunks` [when
  the model starts saying "one", "two", …].
- delegate: `delegations` [{question, request, answer, request_chunk, result_chunk, onset_chunk,
  let_me_check, interjection}] — request_chunk: when DELEGATE is written; result_chunk: the chunk the
  RESULT event is due in; onset_chunk: when the model starts saying the answer; let_me_check /
  interjection: whether the model said "let me check" and whether the user spoke while it waited.
"""

from __future__ import annotations

from collections.abc import Callable

from interaction_jax.config import MIN_EPISODE_SECONDS
from interaction_jax.data.episode import Episode, ScenarioContext, check_episode
from interaction_jax.data.scenarios import (
    backchannel,
    cue_speak,
    delegate,
    interruption,
    rep_count,
    time_speak,
    turn_taking,
)
from interaction_jax.data.scenarios.common import EpisodeTooShort

SCENARIOS: dict[str, Callable[[int, ScenarioContext], Episode]] = {
    turn_taking.NAME: turn_taking.make,
    backchannel.NAME: backchannel.make,
    interruption.NAME: interruption.make,
    time_speak.NAME: time_speak.make,
    cue_speak.NAME: cue_speak.make,
    rep_count.NAME: rep_count.make,
    delegate.NAME: delegate.make,
}


def make_episode(name: str, seed: int, ctx: ScenarioContext) -> Episode:
    """Episode `seed` of scenario `name`, checked against the stream config."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; use one of {list(SCENARIOS)}")
    return check_episode(SCENARIOS[name](seed, ctx), ctx.stream)


__all__ = ["MIN_EPISODE_SECONDS", "SCENARIOS", "EpisodeTooShort", "make_episode"]
