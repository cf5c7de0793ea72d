"""Evaluation: stream held-out episodes through the model chunk by chunk and score its behaviour.

`rollout(cfg, params, episode)` feeds one episode open-loop through a jitted `microturn` and keeps what
the model said; `behaviour` turns (annotations, rollout) into per-scenario metrics; `evaluate(cfg,
params, out_dir)` does both for every scenario and writes wavs, timelines, per-episode JSON and a
summary table.
"""

from interaction_jax.eval.report import GATES, LONG_GATES, EvalReport, evaluate, sampling_summary
from interaction_jax.eval.rollout import Rollout, rollout, vocode

__all__ = ["GATES", "LONG_GATES", "EvalReport", "Rollout", "evaluate", "rollout", "sampling_summary", "vocode"]
