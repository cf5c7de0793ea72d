"""WAV files and PCM16 conversion with the standard library's `wave` module (no extra dependencies).

Floats in [-1, 1] are the in-memory audio everywhere in the project; PCM16 is what goes to disk and
over the serving protocol. The scale is 32768 both ways, so every int16 value maps to a float in
[-1, 1) and back to itself exactly; +1.0 has no int16 and clips to 32767.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

_PCM16_SCALE = 32768.0


def to_pcm16(x) -> np.ndarray:
    """int16 [...]: floats in [-1, 1] scaled by 32768, rounded to nearest and clipped; int16 passes through."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        return x.copy()
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"to_pcm16 expects float samples in [-1, 1] or int16, got dtype {x.dtype}")
    scaled = np.rint(x.astype(np.float64) * _PCM16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def from_pcm16(x) -> np.ndarray:
    """float32 [...] in [-1, 1): int16 samples divided by 32768."""
    x = np.asarray(x)
    if x.dtype != np.int16:
        raise ValueError(f"from_pcm16 expects int16 samples, got dtype {x.dtype}")
    return (x.astype(np.float32) / np.float32(_PCM16_SCALE)).astype(np.float32)


def _decode(frames: bytes, sample_width: int) -> np.ndarray:
    """float32 [n·channels] in [-1, 1) from interleaved little-endian PCM bytes."""
    if sample_width == 1:  # 8-bit WAV is unsigned with silence at 128
        return (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    if sample_width == 2:
        return from_pcm16(np.frombuffer(frames, "<i2").astype(np.int16))
    if sample_width == 3:  # no numpy dtype: place each 3-byte sample in the top of an int32
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.uint32)
        values = ((raw[:, 0] << 8) | (raw[:, 1] << 16) | (raw[:, 2] << 24)).view(np.int32)
        return (values.astype(np.float64) / 2.0**31).astype(np.float32)
    if sample_width == 4:
        return (np.frombuffer(frames, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    raise ValueError(f"unsupported WAV sample width: {sample_width} bytes (supported: 1, 2, 3, 4)")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples, sample_rate) of an integer-PCM WAV file (8, 16, 24 or 32 bit).

    Samples are float32 in [-1, 1): [n] for mono, [n, channels] otherwise. Float and compressed
    WAVs (and WAVE_FORMAT_EXTENSIBLE, which Python's `wave` reads only from 3.12) raise ValueError.
    """
    try:
        with wave.open(str(path), "rb") as f:
            channels, sample_width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except wave.Error as e:
        raise ValueError(f"{path}: not a WAV file this reader supports (integer PCM only): {e}") from e
    except EOFError as e:
        raise ValueError(f"{path}: truncated or empty WAV file") from e
    try:
        samples = _decode(frames, sample_width)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if channels == 1:
        return samples, rate
    return samples.reshape(-1, channels), rate


def write_wav(path: str | Path, samples, sample_rate: int) -> None:
    """Write PCM16: `samples` float in [-1, 1] (clipped) or int16, [n] mono or [n, channels]. Creates parent folders."""
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] == 0):
        raise ValueError(f"samples must be [n] or [n, channels], got shape {samples.shape}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    pcm = to_pcm16(samples).astype("<i2")  # WAV is little-endian whatever the machine
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
