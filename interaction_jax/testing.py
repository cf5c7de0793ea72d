"""Random but well-formed stream payloads, for tests and benchmarks (the data pipeline makes real ones).

Shapes, dtypes and value ranges match what `stream.assemble_window` accepts, so anything that runs
on these runs on real episodes; the values carry no meaning.
"""

from __future__ import annotations

import numpy as np

from interaction_jax import stream, tokenizer
from interaction_jax.config import StreamConfig


def random_chunks(s: StreamConfig, start_chunk: int, num_chunks: int, seed: int) -> list[stream.ChunkPayload]:
    rng = np.random.default_rng(seed)
    chunks = []
    for k in range(start_chunk, start_chunk + num_chunks):
        frame = None
        if stream.chunk_has_frame(s, k):
            frame = rng.integers(0, 256, (s.frame_height, s.frame_width, 3), dtype=np.uint8)
        chunks.append(
            stream.ChunkPayload(
                audio_in=rng.integers(0, s.dmel_levels, (s.audio_slots, s.stack, s.n_mels), dtype=np.uint8),
                text_in=rng.integers(0, tokenizer.NUM_IDS, (s.text_in_slots,), dtype=np.int32),
                text_out=rng.integers(0, tokenizer.NUM_IDS, (s.text_out_slots,), dtype=np.int32),
                audio_out_mel=rng.uniform(s.dmel_min, s.dmel_max, (s.audio_slots, s.stack, s.n_mels)).astype(
                    np.float32
                ),
                frame=frame,
            )
        )
    return chunks


def random_batch(s: StreamConfig, num_chunks: int, batch: int, seed: int = 0, start_chunk: int = 0) -> dict:
    """A batch of `batch` windows of `num_chunks` chunks each, stacked along a leading axis."""
    return stream.stack_windows(
        [
            stream.assemble_window(s, start_chunk, random_chunks(s, start_chunk, num_chunks, seed + 1000 * row))
            for row in range(batch)
        ]
    )


def microturn_block(s: StreamConfig, chunks: list[stream.ChunkPayload], teacher: bool = False) -> dict:
    """The `microturn` input block of one chunk per row; with `teacher`, the payloads' own outputs too."""
    block = {
        "audio": np.stack([c.audio_in for c in chunks]),
        "text": np.stack([c.text_in for c in chunks]),
        "active": np.ones(len(chunks), bool),
    }
    if s.video:
        blank = np.zeros((s.patches_per_frame, 40, 40, 3), np.uint8)
        block["patches"] = np.stack([stream.patchify(c.frame) if c.frame is not None else blank for c in chunks])
    if teacher:
        block["teacher_text"] = np.stack([c.text_out for c in chunks])
        block["teacher_mel"] = np.stack([c.audio_out_mel for c in chunks])
    return block


def window_and_chunked_text_logits(cfg, params, num_chunks: int = 3, rows: int = 2, seed: int = 10):
    """Text logits [rows, num_chunks, text_out_slots, V] of random chunks two ways: one training-window
    forward, and chunk by chunk through a teacher-forced `microturn` (DESIGN §6: equal bit for bit
    under `kernels.alignment: bitwise`)."""
    import jax

    from interaction_jax.model import cache as kv_cache
    from interaction_jax.model import step as step_lib

    s = cfg.stream
    per_row = [random_chunks(s, 0, num_chunks, seed=seed + r) for r in range(rows)]
    batch = stream.stack_windows([stream.assemble_window(s, 0, chunks) for chunks in per_row])
    total = batch["kind"].shape[1]
    forward = jax.jit(lambda p, c, b: step_lib.step(p, c, b, cfg=cfg))
    hidden, _, _ = forward(params, kv_cache.init_cache(cfg.model, rows, total), batch)
    logits = np.asarray(step_lib.text_logits(params, hidden, cfg=cfg))
    out_rows, out_cols = np.nonzero(batch["kind"] == stream.Kind.TEXT_OUT)  # predicted at the token before
    window = logits[out_rows, out_cols - 1].reshape(rows, num_chunks, s.text_out_slots, -1)
    microturn = step_lib.jit_microturn(cfg)
    cache = kv_cache.init_cache(cfg.model, rows, total + 8)
    sampling = step_lib.Sampling.from_config(cfg)
    chunked = []
    for k in range(num_chunks):
        block = microturn_block(s, [per_row[r][k] for r in range(rows)], teacher=True)
        outputs, cache = microturn(params, cache, block, jax.random.key(k), sampling)
        chunked.append(np.asarray(outputs["text_logits"]))
    return window, np.stack(chunked, axis=1)
