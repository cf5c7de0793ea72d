"""Probing micro-turn behaviour: the room the notebooks (`notebooks/`) stand on.

It sits above every other room and reads the model the ways a researcher asks about it:

- `decision`: the model's probability of starting to speak, chunk by chunk, free-running through the
  serving engine (as a live session) and teacher-forced through `step` (as training sees it);
- `edits`: counterfactual edits of an episode's input (a longer pause, a user cut off early, a barge-in,
  a moved cue, another requested time), each a pure function of an episode;
- `internals`: what the forward pass does inside (attention weights, router choices), read through
  `step`'s probe option and aggregated by token kind and by chunk.
"""
