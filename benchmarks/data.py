"""Data pipeline throughput: clip-bank build time, per-scenario episode time, episodes/s and windows/s.

    python benchmarks/data.py [--preset tiny] [--episodes 40] [--workers 0 2] [--out results/data.json]

The clip bank is built from scratch into a temporary folder (that is the first-use cost a new machine
pays once); everything after reads it. Episode and window rates are measured through the real grain
pipeline (`data/pipeline.py`), after one warm-up batch, with 0 workers (all in the main process) and
with worker processes. Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from interaction_jax import config as config_lib
from interaction_jax.data import pipeline, render, scenarios
from interaction_jax.data.bank import ClipBank
from interaction_jax.data.episode import ScenarioContext


def bench_bank(cfg: config_lib.Config, folder: Path) -> tuple[ClipBank, dict]:
    entries = pipeline.bank_entries()
    start = time.perf_counter()
    bank = ClipBank.open(entries, folder, cfg.stream.sample_rate, progress=True)
    build_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in bank.folder.rglob("*") if f.is_file())
    start = time.perf_counter()
    ClipBank.open(entries, folder, cfg.stream.sample_rate, progress=False)
    reopen_s = time.perf_counter() - start
    return bank, {"clips": len(bank), "build_s": build_s, "reopen_s": reopen_s, "mib": size / 2**20}


def bench_scenarios(cfg: config_lib.Config, bank: ClipBank, per_scenario: int) -> dict:
    ctx = ScenarioContext(stream=cfg.stream, clips=bank, split="train", num_chunks=cfg.data.episode_chunks)
    out = {}
    for name in scenarios.names():
        scenarios.make_episode(name, 10_000, ctx)  # warm the clip reads this scenario uses
        make, rend = [], []
        for seed in range(per_scenario):
            start = time.perf_counter()
            ep = scenarios.make_episode(name, seed, ctx)
            mid = time.perf_counter()
            render.episode_windows(ep, cfg.stream, cfg.train.window_chunks)
            make.append(mid - start)
            rend.append(time.perf_counter() - mid)
        out[name] = {"make_ms": 1e3 * float(np.median(make)), "render_ms": 1e3 * float(np.median(rend))}
    return out


def bench_pipeline(cfg: config_lib.Config, bank: ClipBank, workers: int, episodes: int) -> dict:
    per_episode = render.num_windows(cfg.data.episode_chunks, cfg.train.window_chunks)
    batch_size = per_episode  # one episode's windows per batch: episodes/s = batches/s
    ds = pipeline.batches(cfg, "train", batch_size=batch_size, clips=bank, num_workers=workers)
    it = iter(ds)
    next(it)  # warm-up: worker start, first clip reads
    start = time.perf_counter()
    for _ in range(episodes):
        next(it)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "episodes_per_s": episodes / seconds,
        "windows_per_s": episodes * per_episode / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--per-scenario", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args()
    cfg = config_lib.validate(config_lib.preset(args.preset))

    with tempfile.TemporaryDirectory() as tmp:
        bank, bank_stats = bench_bank(cfg, Path(tmp))
        per_scenario = bench_scenarios(cfg, bank, args.per_scenario)
        rates = [bench_pipeline(cfg, bank, w, args.episodes) for w in args.workers]

    s = cfg.stream
    print(
        f"\nclip bank: {bank_stats['clips']} clips, {bank_stats['mib']:.1f} MiB, built in "
        f"{bank_stats['build_s']:.1f} s, reopened in {1e3 * bank_stats['reopen_s']:.1f} ms"
    )
    print(
        f"\nepisodes of {cfg.data.episode_chunks} chunks ({cfg.data.episode_chunks * s.chunk_ms / 1000:.0f} s), "
        f"windows of {cfg.train.window_chunks} chunks; median per episode:"
    )
    print(f"| {'scenario':14s} | make ms | render ms |")
    print(f"|{'-' * 16}|--------:|----------:|")
    for name, r in per_scenario.items():
        print(f"| {name:14s} | {r['make_ms']:7.1f} | {r['render_ms']:9.1f} |")
    print("\ngrain pipeline (scenario mixture → windows → batches):")
    print("| workers | episodes/s | windows/s |")
    print("|--------:|-----------:|----------:|")
    for r in rates:
        print(f"| {r['workers']:7d} | {r['episodes_per_s']:10.1f} | {r['windows_per_s']:9.1f} |")

    result = {
        "preset": args.preset,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "bank": bank_stats,
        "scenarios": per_scenario,
        "pipeline": rates,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
