"""How low can the words CER go? A second draw of the data scored against the first.

    python benchmarks/cer_floor.py [--episodes 8] [--draws 4] [--out benchmarks/results/cer_floor.json]

What the model says is drawn at random: a reply from twelve lines, an acknowledgement from four, a
backchannel or none, "let me check" or not (each episode's `model_lines`). Nothing the model hears tells
these apart, so a perfect model says one of them, not necessarily the one drawn. This plays that perfect
model: for each held-out evaluation episode it draws every line again from its choices and scores the
words against the reference output with both CERs of `eval/behaviour.py`: `text_cer_drawn` (the lines
as drawn) and `text_cer` (the nearest lines the choices allow, 0 by construction). Prints a table per
scenario and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from interaction_jax import config as config_lib
from interaction_jax import tokenizer
from interaction_jax.data import pipeline, render, scenarios
from interaction_jax.eval import behaviour, report


def redraw(lines: list[dict], rng: np.random.Generator) -> str:
    """The words of a second draw: each line one of its choices at random, "" leaving it out."""
    return " ".join(c for c in (line["choices"][rng.integers(len(line["choices"]))] for line in lines) if c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=8, help="held-out evaluation episodes per scenario")
    parser.add_argument("--draws", type=int, default=4, help="second draws per episode")
    parser.add_argument("--out", default="benchmarks/results/cer_floor.json")
    args = parser.parse_args()

    cfg = config_lib.preset("tiny")
    clips = pipeline.clip_source(cfg, progress=False)
    rng = np.random.default_rng(0)
    rows = {}
    for name in scenarios.names():
        drawn, nearest = [], []
        for k in range(args.episodes):
            ep = report.eval_episode(cfg, name, k, clips)
            payloads, _ = render.chunk_payloads(ep, cfg.stream)
            reference = tokenizer.spoken_text(np.stack([p.text_out for p in payloads]).ravel()).lower()
            choices = [[" ".join(c.lower().split()) for c in line["choices"]] for line in ep.annotations["model_lines"]]
            for _ in range(args.draws):
                words = redraw(ep.annotations["model_lines"], rng).lower()
                drawn.append(behaviour.edit_distance(words, reference) / len(reference))
                edits, length = behaviour.nearest_lines_distance(words, choices)
                nearest.append(edits / length if length else 0.0)  # nothing said where nothing may be
        rows[name] = {"text_cer_drawn": float(np.mean(drawn)), "text_cer": float(np.mean(nearest)), "n": len(drawn)}

    print(f"{'scenario':14s} {'n':>4s} {'CER vs the lines drawn':>24s} {'CER vs the nearest lines':>26s}")
    for name, row in rows.items():
        print(f"{name:14s} {row['n']:4d} {row['text_cer_drawn']:24.0%} {row['text_cer']:26.0%}")
    overall = float(np.mean([r["text_cer_drawn"] for r in rows.values()]))
    print(f"{'all':14s} {'':4s} {overall:24.0%} {0.0:26.0%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine()}
    out.write_text(json.dumps({"meta": meta, "episodes": args.episodes, "draws": args.draws, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
