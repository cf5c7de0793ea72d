"""Counterfactual edits of an episode: change its input, keep its reference output and annotations true.

Each edit is a pure function `Episode -> Episode` (plus parameters) returning a new episode that passes
`data.episode.check_episode`, with the same length, scenario, seed and split, whose input is edited and
whose reference output (model audio and text) and `annotations` follow the scenario's own rules, so the
scenario's timeline markers (`eval.report.due_markers`, or `markers` here) and metrics
(`data.scenarios.get(name).metrics`) describe the edited episode; the episode's own reference still scores
as the data does. An edit that does not apply (another scenario, an index out of range, no room) raises
ValueError naming the edit, the episode and the problem.

- `stretch_pause(ep, cfg, seconds, utterance=0, pause=0)`: a longer or shorter mid-turn pause (whole chunks);
- `cut_user_off(ep, cfg, at_s, utterance=0)`: the user stops early; the reply comes by the reply rule;
- `insert_barge_in(ep, cfg, at_s, clips, text=None)`: the user cuts in; the model yields at the chunk's end;
- `move_cue(ep, cfg, seconds, cue=0)`: the red square or the beep comes earlier or later (cue_speak);
- `change_requested_time(ep, cfg, seconds, clips, request=0)`: "tell me in N seconds" with another N.

`timeline` holds what they share: a working copy (`Draft`), shifting the time line, moving and cutting the
model's utterances, silencing and mixing the user's speech over the episode's own noise floor.
"""

from interaction_jax.probing.edits.timed import change_requested_time, move_cue
from interaction_jax.probing.edits.turns import (
    cut_user_off,
    default_interjection,
    insert_barge_in,
    markers,
    stretch_pause,
)

__all__ = [
    "change_requested_time",
    "cut_user_off",
    "default_interjection",
    "insert_barge_in",
    "markers",
    "move_cue",
    "stretch_pause",
]
