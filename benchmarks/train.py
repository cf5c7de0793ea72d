"""Trainer throughput: the real `train_step` (sharded, donated, clipped + masked AdamW), and the whole loop.

    python benchmarks/train.py [--preset tiny] [--steps 20] [--mesh mesh_configs/gpu-1.yaml] [--out …]

1. `step`: the jitted train step on a fixed batch of the real pipeline's shape: median step time,
   tokens/s, and — where the device's peak is known (H100/H200/A100, TPU v4/v5e/v5p) — model FLOPs
   utilisation, from XLA's own FLOP count of the compiled step (`cost_analysis`), so attention,
   the MoE's active experts and the flow head count as they are compiled.
2. `loop`: `train.loop.train` end to end for the same steps (data made on the fly, metrics, no
   checkpoints or evaluation), whose tokens/s includes the host work a real run pays.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from interaction_jax import config as config_lib
from interaction_jax import sharding
from interaction_jax.data import pipeline
from interaction_jax.train import loop, optimizer
from interaction_jax.train import state as state_lib
from interaction_jax.train import step as step_lib
from pallas_kernels.benchmarking import peak_flops


def bench_step(cfg: config_lib.Config, steps: int) -> dict:
    mesh = sharding.make_mesh(cfg.mesh)
    opt = optimizer.make_optimizer(cfg.train)
    shardings = state_lib.state_shardings(cfg, opt, mesh)
    state = state_lib.init_state(cfg, opt, mesh)
    batch = next(iter(pipeline.ShardedBatches(cfg, clips=pipeline.clip_source(cfg))))
    device_batch = sharding.shard_batch(batch, mesh, cfg.mesh)
    fn = step_lib.jit_train_step(cfg, opt, mesh, shardings, batch)
    start = time.perf_counter()
    with sharding.mesh_context(mesh, cfg.mesh):
        compiled = fn.__wrapped__.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    state, _ = jax.block_until_ready(fn(state, device_batch))  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(fn(state, device_batch))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    tokens = int(np.prod(batch["kind"].shape))
    peak = peak_flops(jax.devices()[0].device_kind)
    achieved = flops / median
    return {
        "batch": int(batch["kind"].shape[0]),
        "window_tokens": int(batch["kind"].shape[1]),
        "step_ms_median": 1e3 * median,
        "tokens_per_s": tokens / median,
        "compile_s": compile_s,
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak * jax.device_count()) if peak else None,
    }


def bench_loop(cfg: config_lib.Config, steps: int) -> dict:
    t = dataclasses.replace(cfg.train, steps=steps + 1, log_every=1, eval_every=0, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.train(dataclasses.replace(cfg, train=t), workdir, progress=False)
    return {"steps": steps, "tokens_per_s": result.tokens_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--mesh", default=None, help="mesh config YAML (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/train-<preset>.json)")
    args = parser.parse_args()
    cfg = config_lib.preset(args.preset)
    if args.mesh:
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(args.mesh))
    cfg = config_lib.validate(config_lib.override(cfg, args.set), jax.device_count(), purpose="train")

    device = f"{jax.devices()[0].device_kind} ×{jax.device_count()} ({jax.default_backend()})"
    print(f"preset {args.preset} · {device} · jax {jax.__version__} · {platform.processor() or platform.machine()}")
    step = bench_step(cfg, args.steps)
    looped = bench_loop(cfg, args.steps)
    mfu = "—" if step["mfu"] is None else f"{step['mfu']:.1%}"
    header = ("batch", "tokens/row", "step ms", "tokens/s", "TFLOP/s", "MFU", "loop tokens/s")
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(header, (6, 10, 9, 10, 8, 6, 14), strict=True)))
    print(
        f"{step['batch']:>6} {step['window_tokens']:>10} {step['step_ms_median']:>9.1f} {step['tokens_per_s']:>10,.0f} "
        f"{step['achieved_tflops']:>8.3f} {mfu:>6} {looped['tokens_per_s']:>14,.0f}"
    )
    out = Path(args.out or f"benchmarks/results/train-{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"preset": args.preset, "overrides": args.set, "device": device, "jax": jax.__version__}
    out.write_text(json.dumps(record | {"config": config_lib.to_dict(cfg), "step": step, "loop": looped}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
