"""A small fixed held-out set streamed free-running, for watching behaviour while a model trains.

`BehaviourProbe(cfg, clips)(params)` rolls the first `episodes_per_scenario` evaluation episodes of
every scenario through one serving-engine session each (rollout seed 0, the config's sampling) and
returns flat means, `{"<scenario>/<metric>": value, …, "gates_met": n, "gates": m}`, for a metrics log:
the trainer calls it at each held-out evaluation (`train.behaviour_episodes`), so the log holds the
free-running behaviour next to the teacher-forced numbers, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from interaction_jax.config import Config
from interaction_jax.data.episode import ClipSource
from interaction_jax.eval import behaviour
from interaction_jax.eval.report import ALL, GATES, Gate, default_scenarios, eval_episode, rollout_seed
from interaction_jax.eval.rollout import rollout, rollout_engine


class BehaviourProbe:
    def __init__(
        self,
        cfg: Config,
        clips: ClipSource,
        episodes_per_scenario: int = 1,
        scenarios: Sequence[str] | None = None,
        gates: Sequence[Gate] = GATES,
    ):
        if episodes_per_scenario < 1:
            raise ValueError(f"episodes_per_scenario must be >= 1, got {episodes_per_scenario}")
        self.cfg, self.gates = cfg, tuple(gates)
        names = tuple(scenarios) if scenarios is not None else default_scenarios(cfg)
        self.episodes = [
            (name, k, eval_episode(cfg, name, k, clips)) for name in names for k in range(episodes_per_scenario)
        ]
        self._engine = None

    def __call__(self, params) -> dict[str, float]:
        params = jax.device_get(params)  # the engine runs on one device, whatever mesh trained them
        if self._engine is None:
            self._engine = rollout_engine(self.cfg, params, self.cfg.data.episode_chunks)
        self._engine.params = params  # same shapes: the tick does not recompile
        by_scenario: dict[str, list[dict]] = {}
        for name, k, ep in self.episodes:
            ro = rollout(self.cfg, params, ep, rng_seed=rollout_seed(name, k, 0), engine=self._engine)
            metrics = ro.metrics(ep.annotations)
            by_scenario.setdefault(name, []).append(metrics)
        out: dict[str, float] = {}
        every = behaviour.aggregate([m for ms in by_scenario.values() for m in ms])
        aggregates = {name: behaviour.aggregate(ms) for name, ms in by_scenario.items()} | {ALL: every}
        for name, agg in aggregates.items():
            for key, stat in agg.items():
                if not key.startswith("n_") and stat["mean"] is not None:
                    out[f"{name}/{key}"] = stat["mean"]
        checked = [g for g in self.gates if g.scenario in aggregates]
        out["gates_met"] = float(sum(bool(g.met(out.get(f"{g.scenario}/{g.key}"))) for g in checked))
        out["gates"] = float(len(checked))
        return out
