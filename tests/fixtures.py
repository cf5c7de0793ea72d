"""Test-only helpers (random payloads live in `interaction_jax.testing`, shared with the benchmarks)."""

from __future__ import annotations

import numpy as np


def token_slice(batch: dict, start: int, stop: int) -> dict:
    """Tokens [start, stop) of a step batch, with audio/patch entries re-indexed into the slice
    (entries outside it point past its end, so the embedder drops them)."""
    n = stop - start
    out = {k: batch[k][:, start:stop] for k in ("kind", "position", "text")}
    for entries, index in (("audio", "audio_index"), ("patches", "patch_index")):
        local = batch[index] - start
        out[entries] = batch[entries]
        out[index] = np.where((local >= 0) & (local < n), local, n).astype(np.int32)
    out["patch_cell"] = batch["patch_cell"]
    return out
