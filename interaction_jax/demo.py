"""`interaction-jax demo`: the main job on built-in defaults, end to end on a laptop CPU.

1. train `tiny` on the synthetic scenario mix for a fixed number of steps (checkpointing into
   `<out>/run`), streaming a small held-out set free-running at every evaluation;
2. load the checkpoint back and stream held-out episodes through the serving engine, chunk by chunk,
   exactly as a live session would (`interaction_jax.eval`), at several rollout seeds;
3. write the model's wavs, PNG timelines, the training and behaviour curves, and a per-scenario summary
   with each gate met or not.

Training is bounded by steps, so machines of one CPU type train the same model whatever their speed
(another CPU generation rounds differently and trains another: docs/results.md); the time budget is
only a safety cap, which stops training early with a checkpoint and a warning. Re-running with the
same `--out` resumes training where it stopped (or skips it when done) and evaluates again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from absl import logging

from interaction_jax import config as config_lib
from interaction_jax.config import Config
from interaction_jax.train.metrics import read_jsonl

# The demo's training, fixed so that every machine of one CPU type trains the same model (docs/results.md has the
# measurements behind it): DEMO_STEPS steps of DEMO_BATCH windows of DEMO_WINDOW_CHUNKS chunks. A window
# is a whole episode (data.episode_chunks), the context a served session has (docs/data.md, Windows).
DEMO_STEPS = 840
DEMO_BATCH = 2
DEMO_WINDOW_CHUNKS = 50
DEMO_EVAL_EVERY = 420
# The default safety cap on the whole demo, minutes: generous, so that only a machine much slower than
# two cores stops short of DEMO_STEPS (and says so).
DEFAULT_MAX_MINUTES = 25.0
# Wall time kept back from the cap for loading the checkpoint and the held-out rollouts.
EVAL_RESERVE_S = 150.0
# What the free-running probe during training and the behaviour plot show.
CURVES = (
    ("turn_taking/reply_on_time", "turn-taking reply on time"),
    ("turn_taking/talk_over_rate", "talks over the user"),
    ("backchannel/backchannel_hit", "backchannel hit"),
    ("interruption/yielded", "yields at barge-in"),
    ("cue_speak/cue_hit", "cue hit"),
    ("delegate/delegate_hit", "DELEGATE on time"),
    ("all/audio_agreement", "audible when it should be"),
    ("all/text_cer", "words CER"),
)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    train: object  # train.loop.TrainResult
    report: object  # eval.report.EvalReport
    curve: Path
    behaviour_curve: Path | None


def demo_config(preset: str = "tiny", sets: tuple[str, ...] = ()) -> Config:
    cfg = config_lib.preset(preset)
    cfg = config_lib.override(
        cfg,
        [
            f"train.steps={DEMO_STEPS}",
            f"train.batch_size={DEMO_BATCH}",
            f"train.window_chunks={DEMO_WINDOW_CHUNKS}",
            f"train.eval_every={DEMO_EVAL_EVERY}",
            f"train.checkpoint_every={DEMO_EVAL_EVERY}",
            *sets,
        ],
    )
    return config_lib.validate(cfg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(metrics_path: Path, path: Path) -> Path:
    """Training and held-out loss against step, from the run's metrics.jsonl."""
    plt = _pyplot()
    records = read_jsonl(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("heldout", "o-")):
        rows = [r for r in records if r["split"] == split and r.get("loss") is not None]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=f"{split} loss")
            text = [r for r in rows if r.get("text_ce") is not None]
            ax.plot([r["step"] for r in text], [r["text_ce"] for r in text], style, alpha=0.5, label=f"{split} text CE")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_behaviour(metrics_path: Path, path: Path) -> Path | None:
    """Free-running behaviour on the probe set against step (split "behaviour" of metrics.jsonl), beside the
    teacher-forced accuracy; None when the run logged no behaviour."""
    records = read_jsonl(metrics_path)
    rows = [r for r in records if r["split"] == "behaviour"]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in CURVES:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if key.endswith("text_cer"):  # a CER can run to 10 and would flatten every rate against the axis
            points, label = [(step, min(value, 1.0)) for step, value in points], f"{label} (capped at 1)"
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=label)
    forced = [(r["step"], r["text_acc"]) for r in records if r["split"] == "heldout" and r.get("text_acc") is not None]
    if forced:
        ax.plot(*zip(*forced, strict=True), "k--", alpha=0.6, label="teacher-forced word accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction (free-running, held-out probe set)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_demo(
    out_dir: str | Path = "demo",
    *,
    max_minutes: float = DEFAULT_MAX_MINUTES,
    preset: str = "tiny",
    sets: tuple[str, ...] = (),
    episodes_per_scenario: int = 4,
    rollout_seeds: int = 2,
    progress: bool = True,
) -> DemoResult:
    from interaction_jax import eval as eval_lib
    from interaction_jax.data import pipeline
    from interaction_jax.eval.probe import BehaviourProbe
    from interaction_jax.train import checkpoint, loop

    started = time.perf_counter()
    out_dir = Path(out_dir)
    cfg = demo_config(preset, sets)
    clips = pipeline.clip_source(cfg, progress)
    budget = 60.0 * max_minutes
    train_seconds = max(budget - EVAL_RESERVE_S, 0.5 * budget)
    probe = BehaviourProbe(cfg, clips, cfg.train.behaviour_episodes) if cfg.train.behaviour_episodes else None
    result = loop.train(cfg, out_dir / "run", progress=progress, max_seconds=train_seconds, clips=clips, probe=probe)
    if result.preempted:
        logging.warning(
            "training stopped at step %d of %d by the %g-minute safety cap: this is not the demo's "
            "reproducible model; run the demo again with the same --out to finish its steps",
            result.step,
            cfg.train.steps,
            max_minutes,
        )
    _, params, step = checkpoint.load_params(out_dir / "run")
    report = eval_lib.evaluate(
        cfg,
        params,
        out_dir / "heldout",
        episodes_per_scenario=episodes_per_scenario,
        rollout_seeds=rollout_seeds,
        clips=clips,
        progress=progress,
    )
    curve = plot_curve(out_dir / "run" / "metrics.jsonl", out_dir / "training.png")
    behaviour_curve = plot_behaviour(out_dir / "run" / "metrics.jsonl", out_dir / "behaviour.png")
    elapsed = time.perf_counter() - started
    short = f" — stopped short of {cfg.train.steps} by the time cap" if step < cfg.train.steps else ""
    print(
        f"\ntrained {step} steps{short} in {result.seconds:.0f} s (final loss {result.loss:.3f}); total {elapsed:.0f} s"
    )
    print(eval_lib.sampling_summary(cfg))
    print(report.table())
    print()
    print(report.gate_table())
    curves = f"{curve}" + (f", {behaviour_curve}" if behaviour_curve else "")
    print(f"\nwavs, timelines and episode JSON: {out_dir / 'heldout'}/<scenario>/<k>/; curves: {curves}")
    return DemoResult(out_dir, result, report, curve, behaviour_curve)
