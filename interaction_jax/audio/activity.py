"""Whether a chunk of log-mel is audible: the one rule the session (is the model speaking?) and the
behaviour metrics (audible when it should be?) share."""

from __future__ import annotations

import numpy as np

from interaction_jax.config import StreamConfig

SPEAKING_MARGIN = 2.0  # audio "speaking" threshold above dmel_min, in log10-mel units


def chunk_energy(mel, s: StreamConfig) -> np.ndarray:
    """float32 [n]: mean log10-mel of each chunk's frames (mel [n, ..., n_mels]), clipped to the dMel range."""
    mel = np.clip(np.asarray(mel, np.float32), s.dmel_min, s.dmel_max)
    return mel.reshape(mel.shape[0], -1).mean(axis=1)


def audio_active(energy, s: StreamConfig) -> np.ndarray:
    """bool [n]: chunk energy above dmel_min + SPEAKING_MARGIN."""
    return np.asarray(energy) > s.dmel_min + SPEAKING_MARGIN
