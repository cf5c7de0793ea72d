"""Serving latency: a streaming session against re-sending the history, and the tick against the session count.

    python benchmarks/serve.py [--preset tiny] [--sessions-a 4] [--chunks 300] [--sessions 1,2,4,8,16]
                               [--ticks 30] [--quick] [--out benchmarks/results/serve.json]

Random (untrained) parameters, `step.init_params(cfg, key(0))`; every session has its own random
inputs from `interaction_jax.testing.random_chunks`. Compilation is always excluded (a warm-up call
runs first).

(a) Streaming vs re-send (the shape of SGLang's streaming-session benchmark), `--sessions-a` sessions
    for `--chunks` chunks, per-chunk latency (median, max) over the last 10 chunks:
    - streaming: one `Engine` whose rows hold the whole session (the smallest multiple of 256 slots
      that holds every chunk); every session is ticked every chunk and `engine.tick` is timed (it
      returns host arrays, so it is synchronous).
    - re-send: at chunk k every client sends everything again: a fresh, empty cache, chunks 0 … k-1
      prefilled through one jitted `step` call, then one `microturn` for chunk k. The history is the
      training-style window (`stream.assemble_window`) of the streaming run's own inputs *and* the
      text and mel the model gave back in it, so both modes do the same work on the same tokens.
      Every history is padded with PAD-kind tokens (which write nothing) to the longest one, so the
      prefill compiles once; the time includes moving the window to the device, not assembling it.
    The ratio of the medians, re-send / streaming, is the gain of keeping the session's cache.
(b) Tick latency against the number of sessions: for each S an `Engine(max_sessions=S)` at
    `serve.max_len`, every session active every tick, `--ticks` ticks after a warm-up tick. Each tick
    is a full host-side tick as the server runs it: `Session.prepare` (dMel featurisation of the
    client's PCM), `engine.tick` (the model, timed on its own within the same tick) and
    `Session.finish` (text decoding and the streaming vocoder), for every session. The client sends
    noise as PCM (featurisation costs the same whatever the samples) and a frame on frame chunks.
    "Real-time sessions" is the largest S whose full-tick p99 stays under `chunk_ms`.

Prints a table per part and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.config import Config
from interaction_jax.model import step as step_lib
from interaction_jax.model.cache import init_cache
from interaction_jax.serve.engine import ChunkInput, ChunkOutput, Engine, input_block
from interaction_jax.serve.session import ClientChunk, Session
from interaction_jax.stream import chunk_samples
from interaction_jax.testing import random_chunks

LAST = 10  # chunks timed at the end of the session in (a)
CACHE_ROUNDING = 256


def milliseconds(seconds: list[float]) -> np.ndarray:
    return 1e3 * np.asarray(seconds)


def session_len(s: config_lib.StreamConfig, chunks: int) -> int:
    """Cache slots for a whole session of `chunks` chunks, rounded up to a multiple of CACHE_ROUNDING."""
    return -(-stream.chunk_start(s, chunks) // CACHE_ROUNDING) * CACHE_ROUNDING


def chunk_input(p: stream.ChunkPayload) -> ChunkInput:
    return ChunkInput(audio=p.audio_in, text=p.text_in, patches=None if p.frame is None else stream.patchify(p.frame))


# -- (a) streaming


def run_streaming(
    cfg: Config, params: dict, payloads: list[list[stream.ChunkPayload]], max_len: int
) -> tuple[list[float], list[list[ChunkOutput]]]:
    """Tick every session through all its chunks; the tick times of the last LAST chunks and every output."""
    engine = Engine(cfg, params, max_sessions=len(payloads), max_len=max_len)
    engine.warm_up()
    slots = [engine.open(seed=i) for i in range(len(payloads))]
    chunks = len(payloads[0])
    outputs: list[list[ChunkOutput]] = [[] for _ in payloads]
    times = []
    for k in range(chunks):
        inputs = {slot: chunk_input(p[k]) for slot, p in zip(slots, payloads, strict=True)}
        start = time.perf_counter()
        out = engine.tick(inputs)
        if k >= chunks - LAST:
            times.append(time.perf_counter() - start)
        for slot, o in zip(slots, outputs, strict=True):
            o.append(out[slot])
    return times, outputs


# -- (a) re-send


def pad_window(s: config_lib.StreamConfig, window: dict, chunks: int) -> dict:
    """The window padded to the length of a `chunks`-chunk window: PAD tokens, audio and patch entries
    pointing past the end (dropped). `audio_mel` (a training target) is left out."""
    length = stream.window_length(s, chunks)

    def pad(a: np.ndarray, n: int, value) -> np.ndarray:
        return np.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)

    na, n_patches = stream.num_audio_entries(s, chunks), stream.num_patch_entries(s, chunks)
    return {
        "kind": pad(window["kind"], length, stream.Kind.PAD),
        "position": pad(window["position"], length, 0),
        "text": pad(window["text"], length, tokenizer.PAD),
        "audio": pad(window["audio"], na, 0),
        "audio_index": pad(window["audio_index"], na, length),
        "patches": pad(window["patches"], n_patches, 0),
        "patch_index": pad(window["patch_index"], n_patches, length),
        "patch_cell": pad(window["patch_cell"], n_patches, 0),
    }


def history_batch(
    s: config_lib.StreamConfig, payloads: list[list[stream.ChunkPayload]], outputs: list[list[ChunkOutput]], k: int
) -> dict:
    """Every session's chunks 0 … k-1 with the model's replies, padded to the longest history, stacked."""
    shape = (s.audio_slots, s.stack, s.n_mels)
    windows = []
    for p, o in zip(payloads, outputs, strict=True):
        history = [
            dataclasses.replace(p[j], text_out=o[j].text, audio_out_mel=o[j].mel.reshape(shape)) for j in range(k)
        ]
        windows.append(pad_window(s, stream.assemble_window(s, 0, history), len(p) - 1))
    return stream.stack_windows(windows)


def jit_prefill(cfg: Config, max_len: int):
    """A fresh cache of `max_len` slots per row with the history written, at chunk `chunk`."""

    @jax.jit
    def prefill(params: dict, batch: dict, chunk: jax.Array):
        rows = batch["kind"].shape[0]
        _, cache, _ = step_lib.step(params, init_cache(cfg.model, rows, max_len), batch, cfg=cfg)
        return cache | {"chunk": jnp.full((rows,), chunk, jnp.int32)}

    return prefill


def run_resend(
    cfg: Config,
    params: dict,
    payloads: list[list[stream.ChunkPayload]],
    outputs: list[list[ChunkOutput]],
    max_len: int,
) -> tuple[list[float], list[float]]:
    """Prefill and microturn times of re-sending the history at each of the last LAST chunks."""
    s = cfg.stream
    chunks = len(payloads[0])
    prefill = jit_prefill(cfg, max_len)
    microturn = step_lib.jit_microturn(cfg)
    sampling = step_lib.Sampling.from_config(cfg)

    def resend(k: int, batch: dict, block: dict) -> tuple[float, float]:
        start = time.perf_counter()
        cache = jax.block_until_ready(prefill(params, batch, k))
        mid = time.perf_counter()
        jax.block_until_ready(microturn(params, cache, block, jax.random.key(k), sampling))
        return mid - start, time.perf_counter() - mid

    prefill_s, microturn_s = [], []
    for i, k in enumerate(range(chunks - LAST - 1, chunks)):
        batch = history_batch(s, payloads, outputs, k)
        block = input_block(s, [chunk_input(p[k]) for p in payloads])
        times = resend(k, batch, block)
        if i:  # the first is the warm-up (compiles)
            prefill_s.append(times[0])
            microturn_s.append(times[1])
    return prefill_s, microturn_s


def bench_streaming_vs_resend(cfg: Config, params: dict, sessions: int, chunks: int) -> dict:
    s = cfg.stream
    max_len = session_len(s, chunks)
    payloads = [random_chunks(s, 0, chunks, seed=i) for i in range(sessions)]
    streaming_s, outputs = run_streaming(cfg, params, payloads, max_len)
    prefill_s, microturn_s = run_resend(cfg, params, payloads, outputs, max_len)
    streaming = milliseconds(streaming_s)
    resend = milliseconds(prefill_s) + milliseconds(microturn_s)
    return {
        "sessions": sessions,
        "chunks": chunks,
        "timed_chunks": LAST,
        "cache_len": max_len,
        "history_tokens": [stream.chunk_start(s, chunks - LAST), stream.chunk_start(s, chunks - 1)],
        "padded_history_tokens": stream.window_length(s, chunks - 1),
        "streaming_median_ms": float(np.median(streaming)),
        "streaming_max_ms": float(np.max(streaming)),
        "resend_median_ms": float(np.median(resend)),
        "resend_max_ms": float(np.max(resend)),
        "resend_prefill_median_ms": float(np.median(milliseconds(prefill_s))),
        "resend_microturn_median_ms": float(np.median(milliseconds(microturn_s))),
        "ratio_median": float(np.median(resend) / np.median(streaming)),
    }


# -- (b) sessions


def client_chunks(s: config_lib.StreamConfig, n: int, seed: int) -> list[ClientChunk]:
    """A client's chunks: noise as PCM, and the random payloads' frames on frame chunks."""
    rng = np.random.default_rng(seed)
    samples = chunk_samples(s)
    return [
        ClientChunk(audio=rng.uniform(-0.5, 0.5, samples).astype(np.float32), frame=p.frame, seq=k)
        for k, p in enumerate(random_chunks(s, 0, n, seed))
    ]


def bench_sessions(cfg: Config, params: dict, n: int, ticks: int) -> dict:
    engine = Engine(cfg, params, max_sessions=n)
    engine.warm_up()
    sessions = [Session(cfg, f"bench-{i}", engine.open(seed=i)) for i in range(n)]
    clients = [client_chunks(cfg.stream, ticks + 1, seed=i) for i in range(n)]
    model_s, full_s = [], []
    for t in range(ticks + 1):
        start = time.perf_counter()
        inputs = {x.slot: x.prepare(c[t]) for x, c in zip(sessions, clients, strict=True)}
        tick_start = time.perf_counter()
        outputs = engine.tick(inputs)
        tick_end = time.perf_counter()
        for x in sessions:
            x.finish(outputs[x.slot])
        if t:  # tick 0 is the warm-up
            model_s.append(tick_end - tick_start)
            full_s.append(time.perf_counter() - start)
    model, full = milliseconds(model_s), milliseconds(full_s)
    return {
        "sessions": n,
        "ticks": ticks,
        "cache_len": engine.max_len,
        "model_p50_ms": float(np.percentile(model, 50)),
        "model_p99_ms": float(np.percentile(model, 99)),
        "full_p50_ms": float(np.percentile(full, 50)),
        "full_p99_ms": float(np.percentile(full, 99)),
        "chunk_budget_ms": float(cfg.stream.chunk_ms),
    }


# -- report


def print_streaming(r: dict) -> None:
    lo, hi = r["history_tokens"]
    print(
        f"\n(a) streaming session vs re-sending the history: {r['sessions']} sessions, {r['chunks']} chunks, "
        f"last {r['timed_chunks']} timed; cache {r['cache_len']} slots/row; "
        f"history {lo}–{hi} tokens, padded to {r['padded_history_tokens']}"
    )
    print(f"{'mode':<10} {'median ms':>10} {'max ms':>9}")
    print(f"{'streaming':<10} {r['streaming_median_ms']:>10.1f} {r['streaming_max_ms']:>9.1f}")
    print(f"{'re-send':<10} {r['resend_median_ms']:>10.1f} {r['resend_max_ms']:>9.1f}")
    print(
        f"re-send median = prefill {r['resend_prefill_median_ms']:.1f} ms + microturn "
        f"{r['resend_microturn_median_ms']:.1f} ms"
    )
    print(f"re-send / streaming: {r['ratio_median']:.1f}× (median; target ≥ 10×, SGLang asks ≥ 2×)")


def print_sessions(rows: list[dict], realtime: int) -> None:
    r0 = rows[0]
    print(
        f"\n(b) tick latency vs sessions: {r0['ticks']} ticks, cache {r0['cache_len']} slots/row, "
        f"budget {r0['chunk_budget_ms']:g} ms; full = prepare + engine.tick + finish for every session"
    )
    header = ("sessions", "model p50", "model p99", "full p50", "full p99", "p99 of budget")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 10, 10, 9, 9, 14), strict=True)))
    for r in rows:
        print(
            f"{r['sessions']:>8} {r['model_p50_ms']:>10.1f} {r['model_p99_ms']:>10.1f} {r['full_p50_ms']:>9.1f} "
            f"{r['full_p99_ms']:>9.1f} {r['full_p99_ms'] / r['chunk_budget_ms']:>14.0%}"
        )
    print(f"real-time sessions (largest S with full-tick p99 < {r0['chunk_budget_ms']:g} ms): {realtime or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--sessions-a", type=int, default=4, help="(a): concurrent sessions")
    parser.add_argument("--chunks", type=int, default=300, help="(a): chunks per session")
    parser.add_argument("--sessions", default="1,2,4,8,16", help="(b): comma-separated session counts")
    parser.add_argument("--ticks", type=int, default=30, help="(b): timed ticks per session count")
    parser.add_argument("--quick", action="store_true", help="a fast check: 20 chunks, 5 ticks, sessions 1,2")
    parser.add_argument("--out", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.ticks, args.sessions = 20, 5, "1,2"
    if args.chunks < LAST + 2:
        parser.error(f"--chunks must be at least {LAST + 2}: {LAST} timed, one before them to warm up, and chunk 0")
    counts = [int(n) for n in args.sessions.split(",")]
    cfg = config_lib.validate(config_lib.override(config_lib.preset(args.preset), args.set))
    params = step_lib.init_params(cfg, jax.random.key(0))

    device = f"{jax.devices()[0].device_kind} ×{jax.device_count()} ({jax.default_backend()})"
    machine = platform.processor() or platform.machine()
    print(f"preset {args.preset} · {device} · jax {jax.__version__} · {machine}")
    streaming = bench_streaming_vs_resend(cfg, params, args.sessions_a, args.chunks)
    print_streaming(streaming)
    rows = [bench_sessions(cfg, params, n, args.ticks) for n in counts]
    realtime = max((r["sessions"] for r in rows if r["full_p99_ms"] < r["chunk_budget_ms"]), default=0)
    print_sessions(rows, realtime)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"preset": args.preset, "overrides": args.set, "device": device, "jax": jax.__version__}
    record |= {"machine": machine, "config": config_lib.to_dict(cfg)}
    record |= {"streaming_vs_resend": streaming, "sessions": rows, "realtime_sessions": realtime}
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
