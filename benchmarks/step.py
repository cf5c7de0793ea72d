"""Throughput of the training step and latency of one `microturn` tick.

    python benchmarks/step.py [--preset tiny] [--steps 20] [--ticks 50] [--out results/step.json]

Prints a table and writes the numbers as JSON. The training step is value_and_grad of `loss_fn`
plus an AdamW update (the real trainer adds only host-side work). The microturn tick is the
serving path: prefill one input block and generate the whole output block, for B sessions whose
caches already hold `context` tokens (filled with random keys/values: the cost does not depend on
their values). The cache capacity is context + 256 slots.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from interaction_jax import config as config_lib
from interaction_jax import stream
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib
from interaction_jax.testing import random_batch
from interaction_jax.train import loss as loss_lib


def bench_train(cfg: config_lib.Config, steps: int) -> dict:
    t = cfg.train
    batch = random_batch(cfg.stream, t.window_chunks, t.batch_size)
    params = step_lib.init_params(cfg, jax.random.key(0))
    opt = optax.adamw(t.learning_rate, weight_decay=t.weight_decay)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, rng):
        grads, metrics = jax.grad(lambda p: loss_lib.loss_fn(p, batch, rng, cfg=cfg), has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    start = time.perf_counter()
    params, opt_state, metrics = jax.block_until_ready(train_step(params, opt_state, jax.random.key(0)))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(steps):
        start = time.perf_counter()
        params, opt_state, metrics = jax.block_until_ready(train_step(params, opt_state, jax.random.key(i)))
        times.append(time.perf_counter() - start)
    tokens = batch["kind"].size
    median = float(np.median(times))
    return {
        "batch": t.batch_size,
        "window_tokens": batch["kind"].shape[1],
        "step_ms_median": 1e3 * median,
        "tokens_per_s": tokens / median,
        "compile_s": compile_s,
        "loss": float(metrics["loss"]),
    }


def bench_microturn(cfg: config_lib.Config, sessions: int, context: int, ticks: int) -> dict:
    s = cfg.stream
    params = step_lib.init_params(cfg, jax.random.key(0))
    cache = kv_cache.init_cache(cfg.model, sessions, context + 256)
    rng = np.random.default_rng(0)
    layers = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(a.dtype)), cache["layers"])
    length = jnp.full((sessions,), context, jnp.int32)
    # The chunk counter only decides where frames fall; context // tokens-per-chunk keeps it plausible.
    chunk = jnp.full((sessions,), context // stream.chunk_length(s, 1), jnp.int32)
    cache = {"layers": layers, "length": length, "chunk": chunk}
    block = {
        "audio": jnp.asarray(rng.integers(0, 16, (sessions, s.audio_slots, s.stack, s.n_mels), dtype=np.uint8)),
        "text": jnp.full((sessions, s.text_in_slots), 256, jnp.int32),
        "active": jnp.ones((sessions,), bool),
    }
    if s.video:
        block["patches"] = jnp.zeros((sessions, s.patches_per_frame, 40, 40, 3), jnp.uint8)
    microturn = step_lib.jit_microturn(cfg)
    sampling = step_lib.Sampling.from_config(cfg)
    snapshot = jax.tree.map(jnp.copy, cache)
    start = time.perf_counter()
    _, cache = jax.block_until_ready(microturn(params, cache, block, jax.random.key(0), sampling))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(ticks):
        if i % 8 == 0:  # stay inside the capacity: rewind to the starting context now and then
            cache = jax.tree.map(jnp.copy, snapshot)
        start = time.perf_counter()
        _, cache = jax.block_until_ready(microturn(params, cache, block, jax.random.key(i), sampling))
        times.append(time.perf_counter() - start)
    times_ms = 1e3 * np.asarray(times)
    return {
        "sessions": sessions,
        "context": context,
        "median_ms": float(np.median(times_ms)),
        "p99_ms": float(np.percentile(times_ms, 99)),
        "compile_s": compile_s,
        "chunk_budget_ms": float(s.chunk_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--contexts", type=int, nargs="+", default=[0, 1024, 4096])
    parser.add_argument("--out", default="benchmarks/results/step.json")
    args = parser.parse_args()
    cfg = config_lib.validate(config_lib.override(config_lib.preset(args.preset), args.set))

    device = f"{jax.devices()[0].device_kind} ×{jax.device_count()} ({jax.default_backend()})"
    print(f"preset {args.preset} · {device} · jax {jax.__version__} · {platform.processor() or platform.machine()}")
    train = bench_train(cfg, args.steps)
    print("\ntraining step (loss_fn grad + AdamW)")
    print(f"{'batch':>6} {'tokens/row':>10} {'step ms':>9} {'tokens/s':>10} {'compile s':>10}")
    print(
        f"{train['batch']:>6} {train['window_tokens']:>10} {train['step_ms_median']:>9.1f} "
        f"{train['tokens_per_s']:>10.0f} {train['compile_s']:>10.1f}"
    )

    ticks = []
    print(
        f"\nmicroturn tick (prefill one input block + generate {cfg.stream.text_out_slots} text and "
        f"{cfg.stream.audio_slots} audio slots; budget {cfg.stream.chunk_ms} ms)"
    )
    print(f"{'sessions':>8} {'context':>8} {'median ms':>10} {'p99 ms':>8} {'of budget':>10}")
    for sessions in args.sessions:
        for context in args.contexts:
            r = bench_microturn(cfg, sessions, context, args.ticks)
            ticks.append(r)
            print(
                f"{sessions:>8} {context:>8} {r['median_ms']:>10.1f} {r['p99_ms']:>8.1f} "
                f"{r['median_ms'] / r['chunk_budget_ms']:>9.0%}"
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "preset": args.preset,
                "overrides": args.set,
                "device": device,
                "jax": jax.__version__,
                "config": config_lib.to_dict(cfg),
                "train": train,
                "microturn": ticks,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
