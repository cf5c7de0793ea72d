"""Band-limited resampling of whole clips (eSpeak NG speaks at 22.05 kHz; the stream runs at 16 kHz).

Resampling happens once per synthesised clip, never in the streaming path, so an exact FFT method is
the simplest correct choice: keep the spectrum below both Nyquist rates, drop or zero-fill the rest.
Zero padding on both sides keeps the circular FFT from wrapping the end of a clip onto its start.
"""

from __future__ import annotations

import math

import numpy as np


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a 1-D signal from `orig_rate` to `new_rate` Hz; float32, length round(n·new/orig)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} → {new_rate}")
    if orig_rate == new_rate or x.size == 0:
        return x.astype(np.float32)
    n = x.size
    out_len = round(n * new_rate / orig_rate)
    g = math.gcd(orig_rate, new_rate)
    step_in = orig_rate // g  # input lengths that are multiples of this map to whole output samples
    step_out = new_rate // g
    left = -(-max(256, n // 8) // step_in) * step_in  # a whole number of output samples, too
    total = -(-(n + 2 * left) // step_in) * step_in
    padded = np.zeros(total, np.float64)
    padded[left : left + n] = x
    total_out = total // step_in * step_out
    spectrum = np.fft.rfft(padded)
    keep = min(spectrum.size, total_out // 2 + 1)
    out_spectrum = np.zeros(total_out // 2 + 1, np.complex128)
    out_spectrum[:keep] = spectrum[:keep]
    if total_out % 2 == 0 and keep == total_out // 2 + 1:
        out_spectrum[-1] = out_spectrum[-1].real  # the new Nyquist bin of a real signal is real
    y = np.fft.irfft(out_spectrum, total_out) * (total_out / total)
    start = left // step_in * step_out
    return y[start : start + out_len].astype(np.float32)
