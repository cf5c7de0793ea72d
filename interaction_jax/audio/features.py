"""Log-mel and dMel features (DESIGN §4): what the model hears, computed causally, chunk by chunk.

Analysis: 80 mel channels (HTK mel scale, 80–7600 Hz), a periodic Hann window of 50 ms zero-padded to
n_fft = 1024, a 25 ms hop, the magnitude (not power) spectrum, log10, and a floor at `dmel_min` so that
silence reads exactly `dmel_min`. dMel tokens quantise each value to one of 16 levels on
[dmel_min, dmel_max] with `stream.quantize_dmel`; the inverse (levels → log10-mel) is
`stream.dequantize_dmel`, so this module does not define one.

Framing is *causal*: frame j of a signal analyses samples [(j+1)·hop − win, (j+1)·hop), i.e. it ends
where its hop ends. A server computes features as audio arrives, 200 ms at a time, so a chunk's frames
may only look at that chunk and the past; the win − hop samples before a signal's first sample come
from `history` (the audio that preceded it) or are zeros.

Shapes: a wave of n samples gives n // hop frames; `stack` consecutive frames make one audio token,
so features in token layout are [n // (hop·stack), stack, n_mels].
"""

from __future__ import annotations

import functools

import numpy as np

from interaction_jax.config import StreamConfig
from interaction_jax.stream import quantize_dmel


def hop_samples(cfg: StreamConfig) -> int:
    """Samples between frame ends (400 at 25 ms and 16 kHz)."""
    return cfg.hop_ms * cfg.sample_rate // 1000


def win_samples(cfg: StreamConfig) -> int:
    """Samples in one analysis window (800 at 50 ms and 16 kHz)."""
    return cfg.win_ms * cfg.sample_rate // 1000


def frames_per_chunk(cfg: StreamConfig) -> int:
    """Mel frames per stream chunk (8 at 200 ms chunks and a 25 ms hop)."""
    return cfg.chunk_ms // cfg.hop_ms


def history_samples(cfg: StreamConfig) -> int:
    """How many samples before a signal its first frame reaches back: win − hop (400)."""
    return win_samples(cfg) - hop_samples(cfg)


def hz_to_mel(hz):
    """HTK mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_center_frequencies(cfg: StreamConfig) -> np.ndarray:
    """float64 [n_mels]: the peak frequency (Hz) of each mel filter."""
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    return edges[1:-1]


@functools.lru_cache(maxsize=16)
def mel_filterbank(cfg: StreamConfig) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels], read-only: triangular filters on the HTK mel scale.

    Filter m rises linearly (in Hz) from edge m to edge m + 1 and falls to edge m + 2, where the
    n_mels + 2 edges are evenly spaced in mel between fmin and fmax. Peaks are 1 (no area
    normalisation), evaluated at the FFT bin frequencies, so a filter whose peak falls between bins
    has a maximum a little below 1.
    """
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    bin_hz = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_hz[:, None] - lower) / (center - lower)
    falling = (upper - bin_hz[:, None]) / (upper - center)
    bank = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    bank.flags.writeable = False  # cached and shared: a caller writing into it would corrupt every later call
    return bank


@functools.lru_cache(maxsize=16)
def analysis_window(cfg: StreamConfig) -> np.ndarray:
    """float64 [win], read-only: the periodic Hann window (sums to a constant under 50 % overlap)."""
    win = win_samples(cfg)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
    window.flags.writeable = False
    return window


def _check_wave(wave, cfg: StreamConfig, name: str = "wave") -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"{name} must be 1-D samples, got shape {wave.shape}")
    hop = hop_samples(cfg)
    if wave.size % hop:
        raise ValueError(
            f"{name} has {wave.size} samples, not a multiple of the {hop}-sample hop "
            f"(nearest: {wave.size // hop * hop} or {(wave.size // hop + 1) * hop})"
        )
    return wave.astype(np.float32, copy=False)


def _padded_with_history(wave: np.ndarray, history, cfg: StreamConfig) -> np.ndarray:
    """float32 [win − hop + n]: `history` (or zeros) followed by `wave`."""
    n_history = history_samples(cfg)
    if history is None:
        history = np.zeros(n_history, np.float32)
    history = np.asarray(history, np.float32)
    if history.shape != (n_history,):
        raise ValueError(f"history must hold the last {n_history} samples before the wave, got shape {history.shape}")
    return np.concatenate([history, wave])


def frame_spectra(padded: np.ndarray, num_frames: int, cfg: StreamConfig) -> np.ndarray:
    """complex128 [num_frames, n_fft // 2 + 1]: windowed spectra of frames j·hop … j·hop + win of `padded`.

    Shared by analysis and the vocoder, so both use one frame convention and one window.
    """
    hop, win = hop_samples(cfg), win_samples(cfg)
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:num_frames]
    return np.fft.rfft(frames * analysis_window(cfg), n=cfg.n_fft, axis=-1)


def _magnitudes_to_log_mel(magnitude: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    mel = magnitude @ mel_filterbank(cfg).astype(np.float64)
    logmel = np.log10(np.maximum(mel, 10.0**cfg.dmel_min))
    # log10(10**-7) may round a hair away from -7; clamp so silence is exactly dmel_min.
    return np.maximum(logmel, cfg.dmel_min).astype(np.float32)


def log_mel(wave, cfg: StreamConfig, history=None) -> np.ndarray:
    """float32 [n // hop, n_mels]: causal log10-mel of `wave` (float [n] in [-1, 1], n a multiple of hop).

    `history`: float [win − hop], the samples just before `wave` (zeros when None).

    Frames go through the FFT and the filterbank product one chunk's worth (frames_per_chunk) at a
    time. Batched FFT/BLAS code may round differently for different batch sizes; fixed blocks make a
    frame's value independent of how much audio was passed at once, which is what lets
    `LogMelStream` match this function bit for bit.
    """
    wave = _check_wave(wave, cfg)
    padded = _padded_with_history(wave, history, cfg)
    hop, block = hop_samples(cfg), frames_per_chunk(cfg)
    num_frames = wave.size // hop
    out = np.empty((num_frames, cfg.n_mels), np.float32)
    for start in range(0, num_frames, block):
        count = min(block, num_frames - start)
        spectra = frame_spectra(padded[start * hop :], count, cfg)
        out[start : start + count] = _magnitudes_to_log_mel(np.abs(spectra), cfg)
    return out


class LogMelStream:
    """Causal log-mel of audio that arrives one chunk at a time; equals `log_mel` of the whole, bit for bit.

    `push(chunk)` takes float [chunk_samples] (3200) and returns float32 [frames_per_chunk, n_mels].
    """

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self.chunk_samples = frames_per_chunk(cfg) * hop_samples(cfg)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next chunk is analysed as if silence preceded it."""
        self._history = np.zeros(history_samples(self.cfg), np.float32)

    def push(self, chunk) -> np.ndarray:
        chunk = np.asarray(chunk)
        if chunk.shape != (self.chunk_samples,):
            raise ValueError(f"a chunk must be {self.chunk_samples} samples, got shape {chunk.shape}")
        frames = log_mel(chunk, self.cfg, history=self._history)
        self._history = np.asarray(chunk, np.float32)[-history_samples(self.cfg) :].copy()
        return frames


def to_tokens(frames, cfg: StreamConfig) -> np.ndarray:
    """[F, n_mels] → [F // stack, stack, n_mels]: consecutive frames grouped into audio tokens."""
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[0] % cfg.stack:
        raise ValueError(f"frames of shape {frames.shape} do not group into tokens of {cfg.stack} frames")
    return frames.reshape(frames.shape[0] // cfg.stack, cfg.stack, frames.shape[1])


def from_tokens(tokens) -> np.ndarray:
    """[T, stack, n_mels] → [T·stack, n_mels]: the inverse of `to_tokens`."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [T, stack, n_mels], got shape {tokens.shape}")
    return tokens.reshape(-1, tokens.shape[-1])


def dmel(wave, cfg: StreamConfig, history=None) -> np.ndarray:
    """uint8 [n // (hop·stack), stack, n_mels]: the dMel levels of `wave` in token layout."""
    return to_tokens(quantize_dmel(log_mel(wave, cfg, history), cfg), cfg)
