"""Does the model decide to speak with the context it is served, or only with the one it was trained on?

    python benchmarks/onset_context.py --workdir demo/run [--step N] [--episodes 4] [--windows 25,50]
                                       [--out results/onset_context.json]

A training window starts with an empty cache at its first chunk's global position; a served session
keeps every chunk since position 0. For a window of N chunks shorter than the episode, the chunks past
N are therefore seen in training without the episode's start, and served with it. This scores the
checkpoint teacher-forced on held-out episodes of the answered scenarios both ways: each episode cut into
windows of N chunks (as trained with `train.window_chunks=N`) and whole (as served, N = the episode).
At every reference onset (the first SPEAK or DELEGATE after at least 8 PAD slots) it reads the model's
calibrated probability of starting (1 − p(PAD), with the decoding's PAD correction), split by the half
of the episode the onset falls in; and the same over silent slots (PAD after 8 PADs), whose rate above
½ is the free-running false-start risk. Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from interaction_jax import stream, tokenizer
from interaction_jax.data import pipeline, render
from interaction_jax.eval import report
from interaction_jax.model import step as step_lib
from interaction_jax.train import checkpoint

SCENARIOS = ("turn_taking", "backchannel", "interruption", "time_speak", "cue_speak", "delegate")
QUIET_SLOTS = 8  # PAD slots before an onset (or a silent slot) for it to count as a decision out of silence


def text_logits_fn(cfg):
    """params, window batch → text logits [1, T, V], run as training runs a window (`step.window_forward`)."""
    return jax.jit(
        lambda params, batch: step_lib.text_logits(params, step_lib.window_forward(params, batch, cfg=cfg)[0], cfg=cfg)
    )


def decision_probabilities(forward, cfg, params, episode, window_chunks: int) -> list[tuple[int, bool, float]]:
    """(chunk, is_onset, calibrated p(speak)) at every decision slot out of silence of the episode, cut
    into windows of `window_chunks` chunks each starting with an empty cache."""
    bias = step_lib.pad_logit_bias(cfg.train.pad_weight) if cfg.serve.calibrate_pad else 0.0  # as decoded
    starts = np.array([stream.chunk_start(cfg.stream, c) for c in range(cfg.data.episode_chunks + 1)])
    out = []
    for window in render.episode_windows(episode, cfg.stream, window_chunks):
        batch = {name: value[None] for name, value in window.items() if name != "loss_mask"}
        logits = np.asarray(forward(params, batch))[0]
        slots = np.nonzero((window["kind"] == stream.Kind.TEXT_OUT) & (window["loss_mask"] > 0))[0]
        target = window["text"][slots]
        predicted = logits[slots - 1].copy()  # the logits at slot t-1 predict slot t
        predicted[:, tokenizer.PAD] += bias
        p_speak = 1.0 - np.asarray(jax.nn.softmax(predicted, axis=-1))[:, tokenizer.PAD]
        chunks = np.searchsorted(starts, window["position"][slots], side="right") - 1
        for i in range(QUIET_SLOTS, len(slots)):
            if not (target[i - QUIET_SLOTS : i] == tokenizer.PAD).all():
                continue
            onset = target[i] in (tokenizer.SPEAK, tokenizer.DELEGATE)
            if onset or target[i] == tokenizer.PAD:
                out.append((int(chunks[i]), bool(onset), float(p_speak[i])))
    return out


def summarize(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "n": int(v.size),
        "mean": float(v.mean()) if v.size else None,
        "above_half": float((v > 0.5).mean()) if v.size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run's folder (checkpoints, config.yaml)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    parser.add_argument("--episodes", type=int, default=4, help="held-out episodes per scenario")
    parser.add_argument("--windows", default="25,50", help="window lengths in chunks; the episode's is as served")
    parser.add_argument("--out", default="benchmarks/results/onset_context.json")
    args = parser.parse_args()

    cfg, params, step = checkpoint.load_params(args.workdir, args.step)
    clips = pipeline.clip_source(cfg, False)
    forward = text_logits_fn(cfg)
    half = cfg.data.episode_chunks // 2
    started = time.perf_counter()
    rows = []
    for window_chunks in (int(w) for w in args.windows.split(",")):
        groups: dict[tuple[str, str], list[float]] = {}
        for scenario in SCENARIOS:
            for k in range(args.episodes):
                episode = report.eval_episode(cfg, scenario, k, clips)
                for chunk, onset, p in decision_probabilities(forward, cfg, params, episode, window_chunks):
                    part = "first half" if chunk < half else "second half"
                    groups.setdefault((part, "onsets" if onset else "silent slots"), []).append(p)
        for (part, what), values in sorted(groups.items()):
            served = window_chunks >= cfg.data.episode_chunks
            rows.append(
                {
                    "window_chunks": window_chunks,
                    "context": "whole (served)" if served else "windowed",
                    "part": part,
                    "slots": what,
                }
                | summarize(values)
            )

    print(
        f"{args.workdir} step {step}: calibrated p(speak) at decisions out of silence, teacher-forced, "
        f"{args.episodes} held-out episodes × {len(SCENARIOS)} scenarios ({time.perf_counter() - started:.0f} s)"
    )
    print(f"{'window':>7} {'context':>14} {'part':>12} {'slots':>13} {'n':>5} {'mean p':>7} {'p > ½':>6}")
    for r in rows:
        cells = (r["window_chunks"], r["context"], r["part"], r["slots"], r["n"])
        print("{:>7} {:>14} {:>12} {:>13} {:>5}".format(*cells), f"{r['mean']:>7.3f} {r['above_half']:>6.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "workdir": args.workdir,
        "step": step,
        "episodes": args.episodes,
        "machine": platform.platform(),
        "jax": jax.__version__,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
