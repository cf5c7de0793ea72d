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
