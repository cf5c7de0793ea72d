"""`evaluate`: stream held-out episodes of every scenario through the model and report what it does.

For each scenario and each of its k episodes (episode k of scenario s is held-out seed
`pipeline.episode_seed(cfg.data, "heldout", k · (number of scenarios) + s's number)`, a pure function of
(data.seed, s, k), disjoint from training), `rollout` feeds the episode chunk by chunk once per
rollout seed r (the session's sampling seed `rollout_seed(s, k, r)`) and `behaviour` scores it, both
for the model and for the episode's own reference output (the "data" value next to each number: what
a model that reproduced the data exactly would score). Files:

    out_dir/<scenario>/<k>/model.wav       the model's audio at rollout seed 0, vocoded (mono)
                           dialogue.wav    stereo: the user left, the model right
                           timeline.png    user audio, user text, model audio, model text, markers
                           episode.json    annotations, per-chunk text in / model text / reference text,
                                           audio energies, metrics (seed 0), and every seed's metrics
    out_dir/summary.md, summary.json       one row per scenario (mean over episodes × seeds, with the
                                           spread over episodes and over seeds), and the gates (`GATES`)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from interaction_jax import stream, timeline, tokenizer
from interaction_jax.audio import wav
from interaction_jax.config import Config, StreamConfig
from interaction_jax.data import pipeline
from interaction_jax.data import scenarios as registry  # `scenarios` is evaluate's list of names
from interaction_jax.data.episode import ClipSource, Episode, ScenarioContext
from interaction_jax.data.scenarios.scenario import Column, Marker
from interaction_jax.eval import behaviour
from interaction_jax.eval.rollout import VOCODER_ITERATIONS, Rollout, rollout, rollout_engine
from interaction_jax.stream import chunk_seconds

# Every scenario's row shows its own columns (`Scenario.columns`), then these.
COMMON_COLUMNS = (
    Column("text_agreement", "text-onset agreement", "pct"),
    Column("talk_over_rate", "talks over the user", "pct"),
    Column("audio_agreement", "audible when it should be", "pct"),
    Column("text_cer", "words CER", "pct"),  # against the nearest lines the data could have drawn
    Column("text_cer_drawn", "words CER against the lines drawn", "pct"),
)
ALL = "all"  # the gates' name for every scenario's episodes together


@dataclasses.dataclass(frozen=True)
class Gate:
    """A bar the free-running model should reach: `key` of `scenario` (or of ALL scenarios) vs `bar`."""

    scenario: str
    key: str
    label: str
    op: str  # ">=" or "<="
    bar: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bar if self.op == ">=" else value <= self.bar


# The demo's bars (issue 13): what a tiny model trained for ten minutes on two CPU cores should reach.
GATES = (
    Gate("turn_taking", "reply_on_time", "reply on time (1–2 chunks)", ">=", 0.90),
    Gate("turn_taking", "reply_missed", "reply missed", "<=", 0.05),
    Gate("turn_taking", "pause_false_start", "starts in mid-turn pauses", "<=", 0.10),
    Gate("turn_taking", "talk_over_rate", "talks over the user", "<=", 0.05),
    Gate("backchannel", "backchannel_hit", "backchannel within ±1 chunk", ">=", 0.70),
    Gate("interruption", "talking_at_barge_in", "talking at barge-in", ">=", 0.90),
    Gate("interruption", "yielded", "yields within 2 chunks", ">=", 0.90),
    Gate("interruption", "answer_on_time", "answers on time", ">=", 0.80),
    Gate("cue_speak", "cue_hit", "cue hit ±1 chunk", ">=", 0.80),
    Gate("cue_speak", "cue_premature", "speaks before the cue", "<=", 0.10),
    Gate("delegate", "delegate_hit", "DELEGATE within ±2 chunks", ">=", 0.80),
    Gate("delegate", "request_exact", "exact request", ">=", 0.50),
    Gate("delegate", "answer_said", "answer said", ">=", 0.50),
    Gate(ALL, "audio_agreement", "audible ⇔ it should be", ">=", 0.90),
    Gate(ALL, "text_cer", "words CER (nearest lines)", "<=", 0.30),
)
# The longer recipe's bars (docs/results.md): the harder behaviours.
LONG_GATES = (
    Gate("time_speak", "timer_hit", "TimeSpeak hit ±1 chunk", ">=", 0.50),
    Gate("rep_count", "numbers_said", "numbers said", ">=", 0.50),
    Gate("rep_count", "count_correct", "count accuracy", ">=", 0.30),
    Gate(ALL, "text_cer", "words CER (nearest lines)", "<=", 0.15),
)


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    scenario: str
    k: int  # the k-th evaluated episode of its scenario
    seed: int
    metrics: dict[str, Any]  # at rollout seed 0
    reference: dict[str, Any]  # the same metrics for the episode's own output
    paths: dict[str, Path]
    seed_metrics: tuple[dict[str, Any], ...] = ()  # at every rollout seed, seed 0 first


@dataclasses.dataclass(frozen=True)
class ScenarioRow:
    scenario: str
    episodes: int
    metrics: dict[str, dict]  # key → {"mean", "std", "n"} over episodes × seeds (behaviour.aggregate)
    reference: dict[str, dict]
    cells: tuple[str, ...]  # the formatted metrics, as in the table
    seeds: int = 1
    per_seed: tuple[dict[str, dict], ...] = ()  # the aggregate at each rollout seed alone


@dataclasses.dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    data: float | None  # what the episodes' own reference output scores
    met: bool | None
    n: int = 0  # the rollouts the value is a mean over (a metric may not apply to every one)


@dataclasses.dataclass(frozen=True)
class EvalReport:
    out_dir: Path
    rows: tuple[ScenarioRow, ...]
    episodes: tuple[EpisodeResult, ...]
    summary_md: Path
    summary_json: Path
    seconds: float
    gates: tuple[GateResult, ...] = ()

    def table(self) -> str:
        return format_table(self.rows)

    def gate_table(self) -> str:
        return format_gates(self.gates)


# ----------------------------------------------------------------------------------------------
# Episodes


def eval_index(scenario: str, k: int) -> int:
    """The held-out episode index of the k-th evaluated episode of `scenario` (distinct per (scenario, k)):
    k · (the number of registered scenarios) + the scenario's number, so registering one more scenario
    moves every scenario's evaluation episodes to other held-out seeds."""
    number = registry.get(scenario).number
    if k < 0:
        raise ValueError(f"episode number must be >= 0, got {k}")
    return k * len(registry.names()) + number


def rollout_seed(scenario: str, k: int, r: int) -> int:
    """The sampling seed of rollout r of the k-th evaluated episode of `scenario` (r = 0: `eval_index`)."""
    if r < 0:
        raise ValueError(f"rollout number must be >= 0, got {r}")
    return eval_index(scenario, k) + 1_000_000 * r


def eval_episode(cfg: Config, scenario: str, k: int, clips: ClipSource) -> Episode:
    """The k-th held-out evaluation episode of `scenario`: a pure function of (data.seed, scenario, k)."""
    seed = pipeline.episode_seed(cfg.data, "heldout", eval_index(scenario, k))
    ctx = ScenarioContext(stream=cfg.stream, clips=clips, split="heldout", num_chunks=cfg.data.episode_chunks)
    return registry.make_episode(scenario, seed, ctx)


def default_scenarios(cfg: Config) -> tuple[str, ...]:
    """`data.scenarios`, without those that need video when video is off (rep_count's count is only visible)."""
    return tuple(s for s in cfg.data.scenarios if cfg.stream.video or not registry.get(s).needs_video)


def due_markers(scenario: str, annotations: dict, s: StreamConfig) -> list[Marker]:
    """Timeline markers at what happens and where the data has the model act, in time order."""
    record = registry.get(scenario)
    return sorted([*record.event_markers(annotations, s), *record.due_markers(annotations, s)])


def plottable(ids: np.ndarray) -> np.ndarray:
    """Token ids for the timeline: bytes outside printable ASCII shown as "?" (an untrained model emits
    control bytes and stray UTF-8 the plot font has no glyph for; the corpus is ASCII). Specials stay."""
    ids = np.asarray(ids)
    return np.where((ids < 32) | ((ids >= 127) & (ids < tokenizer.NUM_BYTES)), ord("?"), ids)


def _write_episode(
    folder: Path,
    ep: Episode,
    ro: Rollout,
    k: int,
    metrics: dict,
    reference: dict,
    cfg: Config,
    n_iter: int,
    seed_metrics: Sequence[dict] = (),
) -> dict[str, Path]:
    s = cfg.stream
    folder.mkdir(parents=True, exist_ok=True)
    model_audio = ro.model_audio(n_iter)
    paths = {
        "model_wav": folder / "model.wav",
        "dialogue_wav": folder / "dialogue.wav",
        "timeline": folder / "timeline.png",
        "episode": folder / "episode.json",
    }
    wav.write_wav(paths["model_wav"], model_audio, s.sample_rate)
    wav.write_wav(paths["dialogue_wav"], np.stack([ep.user_audio, model_audio], axis=1), s.sample_rate)
    timeline.plot_timeline(
        paths["timeline"],
        chunk_s=chunk_seconds(s),
        sample_rate=s.sample_rate,
        user_audio=ep.user_audio,
        model_audio=model_audio,
        text_in=ro.text_in,
        text_out=plottable(ro.text),
        markers=due_markers(ep.scenario, ep.annotations, s),
        title=f"{ep.scenario} · held-out seed {ep.seed} · model, free-running",
    )
    energy, reference_energy = ro.energy, ro.reference_energy
    chunks = [
        {
            "chunk": i,
            "text_in": a,
            "text_out": b,
            "reference_text_out": c,
            "energy": round(float(energy[i]), 3),
            "reference_energy": round(float(reference_energy[i]), 3),
            "frame": stream.chunk_has_frame(s, i),
        }
        for i, (a, b, c) in enumerate(
            zip(
                timeline.chunk_text(ro.text_in),
                timeline.chunk_text(ro.text),
                timeline.chunk_text(ro.reference_text),
                strict=True,
            )
        )
    ]
    summary = {
        "scenario": ep.scenario,
        "k": k,
        "seed": ep.seed,
        "split": ep.split,
        "num_chunks": ep.num_chunks,
        "chunk_ms": s.chunk_ms,
        "rng_seed": ro.rng_seed,
        "metrics": metrics,
        "reference_metrics": reference,
        "seed_metrics": list(seed_metrics),
        "annotations": ep.annotations,
        "chunks": chunks,
    }
    paths["episode"].write_text(json.dumps(summary, indent=1))
    return paths


# ----------------------------------------------------------------------------------------------
# Formatting


def format_value(stat: dict | None, unit: str) -> str:
    """One aggregated metric ({"mean", "n"}) with its unit; "n/a" where no episode had it."""
    if stat is None or stat.get("mean") is None:
        return "n/a"
    m = stat["mean"]
    if unit == "pct":
        return f"{100 * m:.0f}%"
    if unit == "count":
        return f"{round(m * stat['n'])}/{stat['n']}"
    if unit == "s":
        return f"{m:.2f} s"
    return f"{m:.1f} chunks"


def format_spread(stat: dict | None, per_seed: Sequence[dict | None], unit: str) -> str:
    """The spread of a metric: ± its standard deviation over episodes × seeds, and each seed's mean."""
    if stat is None or stat.get("mean") is None or unit == "count":
        return ""
    scale = 100.0 if unit == "pct" else 1.0
    seeds = [p["mean"] for p in per_seed if p is not None and p.get("mean") is not None]
    std = stat.get("std")
    spread = f" ±{scale * std:.{0 if unit == 'pct' else 1}f}" if std is not None else ""
    if len(seeds) > 1:
        spread += " [seeds " + "/".join(format_value({"mean": v, "n": 1}, unit) for v in seeds) + "]"
    return spread


def row_cells(scenario: str, metrics: dict, reference: dict, per_seed: Sequence[dict] = ()) -> tuple[str, ...]:
    cells = []
    for key, label, unit in (*registry.get(scenario).columns, *COMMON_COLUMNS):
        value = format_value(metrics.get(key), unit)
        spread = format_spread(metrics.get(key), [p.get(key) for p in per_seed], unit)
        data = format_value(reference.get(key), unit)
        cells.append(f"{label} {value}{spread} (data: {data})")
    return tuple(cells)


def format_table(rows: Sequence[ScenarioRow]) -> str:
    """The markdown table: one row per scenario, its episode count and metrics (data's value in parentheses)."""
    lines = ["| scenario | episodes | what the model does (the data's own value) |", "|---|---:|---|"]
    for row in rows:
        lines.append(f"| {row.scenario} | {row.episodes} | {'; '.join(row.cells)} |")
    return "\n".join(lines)


def check_gates(
    gates: Sequence[Gate], rows: Sequence[ScenarioRow], episodes: Sequence[EpisodeResult]
) -> tuple[GateResult, ...]:
    """Each gate's value (the scenario's mean, or for ALL the mean over every episode × seed), the data's, met."""
    by_name = {r.scenario: r for r in rows}
    every = behaviour.aggregate([m for e in episodes for m in (e.seed_metrics or (e.metrics,))])
    every_reference = behaviour.aggregate([e.reference for e in episodes])
    out = []
    for gate in gates:
        if gate.scenario == ALL:
            stat, data = every.get(gate.key), every_reference.get(gate.key)
        elif gate.scenario in by_name:
            stat, data = by_name[gate.scenario].metrics.get(gate.key), by_name[gate.scenario].reference.get(gate.key)
        else:
            continue  # the scenario was not evaluated
        value, n = (None, 0) if stat is None else (stat["mean"], stat["n"])
        out.append(GateResult(gate, value, None if data is None else data["mean"], gate.met(value), n))
    return tuple(out)


def format_gates(results: Sequence[GateResult]) -> str:
    """The gates as a markdown table: bar, the model's value and the rollouts it is a mean over (a metric
    such as `yielded` applies only where the model was talking), the data's value, met / not met."""
    lines = ["| scenario | gate | bar | model | rollouts | data | |", "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"
        verdict = {True: "met", False: "**not met**", None: "n/a"}[r.met]
        g = r.gate
        cells = (g.scenario, g.label, f"{g.op} {pct(g.bar)}", pct(r.value), str(r.n), pct(r.data), verdict)
        lines.append("| " + " | ".join(cells) + " |")
    met = sum(r.met is True for r in results)
    lines.append(f"\n{met} of {len(results)} gates met.")
    return "\n".join(lines)


def sampling_summary(cfg: Config) -> str:
    """One line saying how the model's outputs are sampled under `cfg` (stated in every summary)."""
    from interaction_jax.model.step import Sampling

    sv, sampling = cfg.serve, Sampling.from_config(cfg)
    text = "greedy" if sv.temperature == 0 else f"temperature {sv.temperature:g}, top-p {sv.top_p:g}"
    bias = float(sampling.pad_bias)
    pad = (
        f"PAD logit {bias:+.2f} (calibrated for train.pad_weight {cfg.train.pad_weight:g})"
        if sv.calibrate_pad
        else "PAD logit uncorrected"
    )
    return (
        f"sampling: speaks when p(not PAD) > {sv.speak_threshold:g}, text {text}, {pad}; "
        f"mel {sv.flow_steps} Euler steps at flow temperature {sv.flow_temperature:g}"
    )


def _summary_md(
    rows: Sequence[ScenarioRow],
    gates: Sequence[GateResult],
    cfg: Config,
    episodes_per_scenario: int,
    rollout_seeds: int,
    seconds: float,
) -> str:
    return "\n".join(
        [
            "# Behaviour on held-out episodes",
            "",
            f"{episodes_per_scenario} held-out episode(s) per scenario × {rollout_seeds} rollout seed(s), "
            f"{cfg.data.episode_chunks} chunks of {cfg.stream.chunk_ms} ms each, streamed open-loop through the "
            f"serving engine, free-running; {sampling_summary(cfg)}; {seconds:.1f} s.",
            "",
            format_table(rows),
            "",
            "Values are means over episodes × seeds, ± their standard deviation, [each seed's mean]; chunk counts "
            "are in chunks of the stream; the value in parentheses is what the episode's own reference output "
            "scores. Definitions: `interaction_jax/eval/behaviour.py`.",
            "",
            "## Gates",
            "",
            format_gates(gates),
            "",
        ]
    )


# ----------------------------------------------------------------------------------------------
# evaluate


def score_episode(
    cfg: Config, params: dict, ep: Episode, k: int, rollout_seeds: int, engine
) -> tuple[list[Rollout], list[dict], dict]:
    """Roll `ep` out at `rollout_seeds` seeds; (rollouts, metrics per seed, the reference's metrics)."""
    rollouts, metrics = [], []
    for r in range(rollout_seeds):
        ro = rollout(cfg, params, ep, rng_seed=rollout_seed(ep.scenario, k, r), engine=engine)
        rollouts.append(ro)
        metrics.append(ro.metrics(ep.annotations))
    reference = rollouts[0].reference_metrics(ep.annotations)
    return rollouts, metrics, reference


def evaluate(
    cfg: Config,
    params: dict,
    out_dir: str | Path,
    *,
    episodes_per_scenario: int = 2,
    rollout_seeds: int = 1,
    scenarios: Sequence[str] | None = None,
    clips: ClipSource | None = None,
    progress: bool = True,
    vocoder_iterations: int = VOCODER_ITERATIONS,
    gates: Sequence[Gate] = GATES,
) -> EvalReport:
    """Roll the model out over `episodes_per_scenario` held-out episodes of each scenario, `rollout_seeds`
    sampling seeds each, score them, write every episode's files and the summary into `out_dir`.

    `scenarios`: default `data.scenarios` (rep_count dropped when video is off); `clips`: default the
    clip bank (`pipeline.clip_source`). Every rollout is one session of the same one-session serving
    engine, ticked chunk by chunk. `gates` are checked against the result and written to the summary.
    """
    if episodes_per_scenario < 1:
        raise ValueError(f"episodes_per_scenario must be >= 1, got {episodes_per_scenario}")
    if rollout_seeds < 1:
        raise ValueError(f"rollout_seeds must be >= 1, got {rollout_seeds}")
    registry.check_mix(cfg)
    names = tuple(scenarios) if scenarios is not None else default_scenarios(cfg)
    for name in names:
        if registry.get(name).needs_video and not cfg.stream.video:  # unknown names fail here too
            raise ValueError(f"{name} needs the video, but stream.video is off; leave it out")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = clips if clips is not None else pipeline.clip_source(cfg, progress)
    engine = rollout_engine(cfg, params, cfg.data.episode_chunks)

    results: list[EpisodeResult] = []
    rows: list[ScenarioRow] = []
    total = len(names) * episodes_per_scenario * rollout_seeds
    bar = tqdm(total=total, desc="evaluate", unit="rollout", disable=not progress)
    try:
        for name in names:
            model_metrics, reference_metrics = [], []
            per_seed: list[list[dict]] = [[] for _ in range(rollout_seeds)]
            for k in range(episodes_per_scenario):
                bar.set_postfix_str(f"{name} {k}")
                ep = eval_episode(cfg, name, k, clips)
                rollouts, metrics, reference = score_episode(cfg, params, ep, k, rollout_seeds, engine)
                bar.update(rollout_seeds)
                paths = _write_episode(
                    out_dir / name / str(k), ep, rollouts[0], k, metrics[0], reference, cfg, vocoder_iterations, metrics
                )
                results.append(EpisodeResult(name, k, ep.seed, metrics[0], reference, paths, tuple(metrics)))
                model_metrics += metrics
                reference_metrics.append(reference)
                for r, m in enumerate(metrics):
                    per_seed[r].append(m)
            agg, ref = behaviour.aggregate(model_metrics), behaviour.aggregate(reference_metrics)
            seeds = tuple(behaviour.aggregate(m) for m in per_seed)
            cells = row_cells(name, agg, ref, seeds)
            rows.append(ScenarioRow(name, episodes_per_scenario, agg, ref, cells, rollout_seeds, seeds))
    finally:
        bar.close()

    seconds = time.perf_counter() - start
    gate_results = check_gates(gates, rows, results)
    summary_md, summary_json = out_dir / "summary.md", out_dir / "summary.json"
    summary_md.write_text(_summary_md(rows, gate_results, cfg, episodes_per_scenario, rollout_seeds, seconds))
    summary = {
        "episodes_per_scenario": episodes_per_scenario,
        "rollout_seeds": rollout_seeds,
        "scenarios": list(names),
        "num_chunks": cfg.data.episode_chunks,
        "chunk_ms": cfg.stream.chunk_ms,
        "sampling": sampling_summary(cfg),
        "seconds": seconds,
        "rows": [
            {
                "scenario": r.scenario,
                "episodes": r.episodes,
                "seeds": r.seeds,
                "metrics": r.metrics,
                "per_seed": list(r.per_seed),
                "reference": r.reference,
                "cells": list(r.cells),
            }
            for r in rows
        ],
        "gates": [{**dataclasses.asdict(g.gate), "value": g.value, "data": g.data, "met": g.met} for g in gate_results],
        "episodes": [
            {
                "scenario": e.scenario,
                "k": e.k,
                "seed": e.seed,
                "dir": str(e.paths["episode"].parent.relative_to(out_dir)),
                "metrics": e.metrics,
                "seed_metrics": list(e.seed_metrics),
            }
            for e in results
        ],
    }
    summary_json.write_text(json.dumps(summary, indent=1))
    return EvalReport(out_dir, tuple(rows), tuple(results), summary_md, summary_json, seconds, gate_results)
