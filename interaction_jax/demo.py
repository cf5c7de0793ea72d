"""`interaction-jax demo`: the main job on built-in defaults, end to end on a laptop CPU.

1. train `tiny` on the synthetic scenario mix for a bounded time (checkpointing into `<out>/run`);
2. load the checkpoint back and stream held-out episodes through `microturn`, chunk by chunk, exactly
   as a live session would (`interaction_jax.eval`);
3. write the model's wavs, PNG timelines, a training curve and a per-scenario summary of what it learned.

Re-running with the same `--out` resumes training where it stopped (or skips it when done) and
evaluates again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from interaction_jax import config as config_lib
from interaction_jax.config import Config
from interaction_jax.train.metrics import read_jsonl

# Steps of the default demo: what 2 CPU cores train in about 7 minutes (measured in docs/results.md);
# a slower machine stops at the time budget instead, with a checkpoint, and evaluates what it has.
DEMO_STEPS = 1800
# Wall time kept back from training for loading the checkpoint and the held-out rollouts.
EVAL_RESERVE_S = 75.0


@dataclasses.dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    train: object  # train.loop.TrainResult
    report: object  # eval.report.EvalReport
    curve: Path


def demo_config(preset: str = "tiny", sets: tuple[str, ...] = ()) -> Config:
    cfg = config_lib.preset(preset)
    cfg = config_lib.override(
        cfg, [f"train.steps={DEMO_STEPS}", "train.eval_every=300", "train.checkpoint_every=300", *sets]
    )
    return config_lib.validate(cfg)


def plot_curve(metrics_path: Path, path: Path) -> Path:
    """Training and held-out loss against step, from the run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def run_demo(
    out_dir: str | Path = "demo",
    *,
    max_minutes: float = 10.0,
    preset: str = "tiny",
    sets: tuple[str, ...] = (),
    episodes_per_scenario: int = 2,
    progress: bool = True,
) -> DemoResult:
    from interaction_jax import eval as eval_lib
    from interaction_jax.train import checkpoint, loop

    started = time.perf_counter()
    out_dir = Path(out_dir)
    cfg = demo_config(preset, sets)
    budget = 60.0 * max_minutes
    train_seconds = max(budget - EVAL_RESERVE_S, 0.5 * budget)
    result = loop.train(cfg, out_dir / "run", progress=progress, max_seconds=train_seconds)
    _, params, step = checkpoint.load_params(out_dir / "run")
    report = eval_lib.evaluate(
        cfg, params, out_dir / "heldout", episodes_per_scenario=episodes_per_scenario, progress=progress
    )
    curve = plot_curve(out_dir / "run" / "metrics.jsonl", out_dir / "training.png")
    elapsed = time.perf_counter() - started
    print(f"\ntrained {step} steps in {result.seconds:.0f} s (final loss {result.loss:.3f}); total {elapsed:.0f} s")
    print(report.table())
    print(f"\nwavs, timelines and episode JSON: {out_dir / 'heldout'}/<scenario>/<k>/; training curve: {curve}")
    return DemoResult(out_dir, result, report, curve)
