"""How much does a trained model's teacher-forced text lean on hearing its own voice?

    python benchmarks/own_voice.py --workdir demo/run [--episodes 16] [--out benchmarks/results/own_voice.json]

Teacher forcing feeds the data's clean voice in the model's AUDIO_OUT tokens, and a word's bytes spill
over the chunks it takes to say, so a model that hears itself has heard the start of a word before it
predicts the word's later bytes. Served, it hears its own flow output instead. This scores the
checkpoint's teacher-forced accuracy on the held-out windows training evaluates (greedy, the tokens the
model should say: SPEAK, the bytes, all of them), once as trained and once with every AUDIO_OUT dMel set
to the silent level. A model trained with `model.hear_own_voice=false` scores the same both ways.
Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax import stream, tokenizer
from interaction_jax.data import pipeline
from interaction_jax.model import step as step_lib
from interaction_jax.train import checkpoint


def accuracy_counts(cfg, params, batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{token group: (correct, scored)} of the greedy text prediction over a batch of windows."""
    hidden, _ = step_lib.window_forward(params, batch, cfg=cfg)
    predicted = jnp.argmax(step_lib.text_logits(params, hidden, cfg=cfg), axis=-1)
    t = cfg.train
    targets, weights = stream.text_targets(batch["kind"], batch["text"], t.pad_weight, t.decision_weight)
    mask = batch["loss_mask"]  # weights[t] scores token t + 1
    weights = weights * jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    said = (weights > 0) & (targets != tokenizer.PAD)
    groups = {"SPEAK": said & (targets == tokenizer.SPEAK), "bytes": said & (targets < 256), "all said": said}
    return {name: (jnp.sum((predicted == targets) & g), jnp.sum(g)) for name, g in groups.items()}


def silence_own_voice(batch: dict, silent_level: int) -> dict:
    """The batch with the dMel of every AUDIO_OUT entry at the silent level."""
    own = stream.audio_out_entries(batch["kind"], batch["audio_index"])
    return batch | {"audio": jnp.where(own[..., None, None], jnp.uint8(silent_level), batch["audio"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run's folder (its latest checkpoint)")
    parser.add_argument("--episodes", type=int, default=16, help="held-out episodes (training's eval split)")
    parser.add_argument("--out", default="benchmarks/results/own_voice.json")
    args = parser.parse_args()

    cfg, params, step = checkpoint.load_params(args.workdir)
    clips = pipeline.clip_source(cfg, progress=False)
    batches = pipeline.ShardedBatches(
        cfg, "heldout", clips=clips, num_episodes=args.episodes, process_index=0, process_count=1
    )
    silent_level = int(stream.quantize_dmel(np.full(1, cfg.stream.dmel_min, np.float32), cfg.stream)[0])
    counts = jax.jit(lambda p, b: accuracy_counts(cfg, p, b))
    totals = {"as trained": {}, "own voice silenced": {}}
    for batch in batches:
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        for variant, fed in (("as trained", batch), ("own voice silenced", silence_own_voice(batch, silent_level))):
            for group, (correct, scored) in counts(params, fed).items():
                c, n = totals[variant].get(group, (0, 0))
                totals[variant][group] = (c + int(correct), n + int(scored))

    groups = list(totals["as trained"])
    print(f"{args.workdir}: step {step}, hear_own_voice={cfg.model.hear_own_voice}, {args.episodes} held-out episodes")
    print("| teacher-forced accuracy | " + " | ".join(f"{g} ({totals['as trained'][g][1]})" for g in groups) + " |")
    print("|---|" + "---:|" * len(groups))
    for variant, by_group in totals.items():
        print(f"| {variant} | " + " | ".join(f"{c / max(n, 1):.1%}" for c, n in by_group.values()) + " |")
    result = {
        "workdir": str(args.workdir),
        "step": step,
        "hear_own_voice": cfg.model.hear_own_voice,
        "episodes": args.episodes,
        "machine": platform.processor() or platform.machine(),
        "accuracy": {v: {g: c / max(n, 1) for g, (c, n) in by_group.items()} for v, by_group in totals.items()},
        "scored": {g: n for g, (_, n) in totals["as trained"].items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
