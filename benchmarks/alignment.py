"""Trainer–sampler alignment: how far serving's text logits are from training's, per config.

    python benchmarks/alignment.py [--chunks 3]

For each config, random chunks go through one training-window forward and, chunk by chunk, through a
teacher-forced `microturn` (`interaction_jax.testing.window_and_chunked_text_logits`); the table gives
the largest |difference| of the text logits (0: bit for bit) and the seconds it took (CPU: the
Pallas kernels run interpreted). Writes benchmarks/results/alignment.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from interaction_jax import config as config_lib
from interaction_jax.model import step as step_lib
from interaction_jax.testing import window_and_chunked_text_logits

CONFIGS = {
    "tiny, fast": [],
    "tiny, bitwise": ["kernels.alignment=bitwise"],
    "tiny, bitwise, MoE kernels": ["kernels.alignment=bitwise", "model.moe_dispatch=auto"],
    "tiny bf16, fast": ["model.dtype=bfloat16"],
    "tiny bf16, bitwise, MoE kernels": ["model.dtype=bfloat16", "kernels.alignment=bitwise", "model.moe_dispatch=auto"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/alignment.json")
    args = parser.parse_args()
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}) · jax {jax.__version__}\n")
    print(f"{'config':32} {'max |Δ logit|':>14} {'bit for bit':>11} {'seconds':>8}")
    rows = []
    for name, sets in CONFIGS.items():
        cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), sets))
        start = time.perf_counter()
        window, chunked = window_and_chunked_text_logits(
            cfg, step_lib.init_params(cfg, jax.random.key(0)), num_chunks=args.chunks
        )
        seconds = time.perf_counter() - start
        diff = float(np.max(np.abs(window - chunked)))
        rows.append({"config": name, "overrides": sets, "max_abs_diff": diff, "bitwise": diff == 0.0, "s": seconds})
        print(f"{name:32} {diff:>14.3g} {'yes' if diff == 0.0 else 'no':>11} {seconds:>8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": jax.devices()[0].device_kind, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
