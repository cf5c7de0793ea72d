"""The micro-turn stream layout (DESIGN §4): token kinds, slots, positions, payload packing, targets.

Time is cut into chunks of `chunk_ms`. Chunk k is an input block then an output block, so a stream
reads `I0 O0 I1 O1 …`:

    input block k:  AUDIO_IN × audio_slots, VIDEO_IN × patches_per_frame (only when a frame falls in
                    chunk k, i.e. k % video_every == 0), TEXT_IN × text_in_slots
    output block k: TEXT_OUT × text_out_slots, AUDIO_OUT × audio_slots

The layout of chunk k is a pure function of (config, k), so a token's global position (its index
since the session began, used by RoPE) maps to a fixed wall time. Layout helpers are plain numpy on
Python ints; the value helpers (`patchify`, dMel quantisation, mel normalisation) work on numpy and
JAX arrays alike and return the same kind they are given; `input_block_kinds`, `text_targets` and
`audio_out_entries` are jnp and safe under `jit`.

Targets: each output token is predicted from the hidden state of the previous token.

The speak decision. Every word the model says starts with one SPEAK token in TEXT_OUT, placed in the
slot where the word's speech begins, and its bytes follow in the next slots (no space byte: SPEAK is
the word boundary); EOT follows the last word of an utterance, in the chunk where its speech ends.
So whether the model starts talking in a slot is one token (SPEAK, or DELEGATE for a request)
against PAD, instead of being spread over every possible first byte of a word — under greedy
decoding PAD would otherwise win whenever it beats the single likeliest byte (the spirit of Moshi's
end-of-padding token). Runs longer than a chunk's slots spill into the next chunks (`data/render.py`).
`tokenizer.spoken_text` reads the words back.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax import tokenizer
from interaction_jax.config import PATCH_SIZE, StreamConfig


def chunk_samples(cfg: StreamConfig) -> int:
    """Audio samples per chunk (3200 at 200 ms and 16 kHz)."""
    return cfg.chunk_ms * cfg.sample_rate // 1000


def chunk_seconds(cfg: StreamConfig) -> float:
    return cfg.chunk_ms / 1000.0


class Kind(enum.IntEnum):
    PAD = 0
    AUDIO_IN = 1
    VIDEO_IN = 2
    TEXT_IN = 3
    TEXT_OUT = 4
    AUDIO_OUT = 5


NUM_KINDS = 6
OUTPUT_KINDS = (Kind.TEXT_OUT, Kind.AUDIO_OUT)


def _xp(x):
    """The array module of `x`: jnp for JAX arrays (tracers included), numpy for everything else."""
    return jnp if isinstance(x, jax.Array) else np


def _check_chunk_index(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer chunk index, got {k!r}")
    if k < 0:
        raise ValueError(f"{name} must be >= 0, got {k}")
    return int(k)


# ----------------------------------------------------------------------------------------------
# Layout


def chunk_has_frame(cfg: StreamConfig, k: int) -> bool:
    """Whether a video frame (and so a run of VIDEO_IN tokens) falls in chunk k."""
    return bool(cfg.video) and k % cfg.video_every == 0


def input_kinds(cfg: StreamConfig, k: int) -> np.ndarray:
    """Kinds of chunk k's input block: AUDIO_IN…, VIDEO_IN… (frame chunks only), TEXT_IN…."""
    n_video = cfg.patches_per_frame if chunk_has_frame(cfg, k) else 0
    return np.concatenate(
        [
            np.full(cfg.audio_slots, Kind.AUDIO_IN, np.int32),
            np.full(n_video, Kind.VIDEO_IN, np.int32),
            np.full(cfg.text_in_slots, Kind.TEXT_IN, np.int32),
        ]
    )


def output_kinds(cfg: StreamConfig) -> np.ndarray:
    """Kinds of every output block: TEXT_OUT…, AUDIO_OUT…."""
    return np.concatenate(
        [np.full(cfg.text_out_slots, Kind.TEXT_OUT, np.int32), np.full(cfg.audio_slots, Kind.AUDIO_OUT, np.int32)]
    )


def chunk_kinds(cfg: StreamConfig, k: int) -> np.ndarray:
    """Kinds of chunk k: its input block then its output block."""
    return np.concatenate([input_kinds(cfg, k), output_kinds(cfg)])


def _base_chunk_length(cfg: StreamConfig) -> int:
    """Tokens of a chunk without a frame."""
    return 2 * cfg.audio_slots + cfg.text_in_slots + cfg.text_out_slots


def chunk_length(cfg: StreamConfig, k: int) -> int:
    """Number of tokens in chunk k."""
    return _base_chunk_length(cfg) + (cfg.patches_per_frame if chunk_has_frame(cfg, k) else 0)


def _frames_before(cfg: StreamConfig, k: int) -> int:
    """How many of chunks 0 … k-1 carry a frame."""
    if not cfg.video:
        return 0
    return -(-k // cfg.video_every)  # ceil(k / video_every): the multiples of video_every in [0, k)


def chunk_start(cfg: StreamConfig, k: int) -> int:
    """Global position of chunk k's first token (the sum of chunk_length over chunks 0 … k-1)."""
    k = _check_chunk_index(k)
    return k * _base_chunk_length(cfg) + _frames_before(cfg, k) * cfg.patches_per_frame


def window_length(cfg: StreamConfig, num_chunks: int) -> int:
    """Tokens in a window of `num_chunks` chunks starting at a chunk with k % video_every == 0."""
    return chunk_start(cfg, _check_chunk_index(num_chunks, "num_chunks"))


def num_audio_entries(cfg: StreamConfig, num_chunks: int) -> int:
    """Na: AUDIO_IN plus AUDIO_OUT tokens in a window of `num_chunks` chunks."""
    return 2 * cfg.audio_slots * _check_chunk_index(num_chunks, "num_chunks")


def num_patch_entries(cfg: StreamConfig, num_chunks: int) -> int:
    """Np: VIDEO_IN tokens in an aligned window of `num_chunks` chunks (0 when video is off)."""
    return _frames_before(cfg, _check_chunk_index(num_chunks, "num_chunks")) * cfg.patches_per_frame


def max_input_block(cfg: StreamConfig) -> int:
    """Size of the fixed serving input block: room for audio, a whole frame's patches and text."""
    return cfg.audio_slots + cfg.patches_per_frame + cfg.text_in_slots


def input_block_kinds(cfg: StreamConfig, has_frame) -> jax.Array:
    """Kinds of the fixed-size serving input block, VIDEO_IN slots set to PAD where there is no frame.

    `has_frame` is a bool or a bool array of any shape [...]; the result is int32 [..., max_input_block].
    Jit-friendly (has_frame may be traced).
    """
    full = np.concatenate(
        [
            np.full(cfg.audio_slots, Kind.AUDIO_IN, np.int32),
            np.full(cfg.patches_per_frame, Kind.VIDEO_IN, np.int32),
            np.full(cfg.text_in_slots, Kind.TEXT_IN, np.int32),
        ]
    )
    has = jnp.asarray(has_frame, dtype=bool)[..., None]
    is_video = jnp.asarray(full == Kind.VIDEO_IN)
    return jnp.where(is_video & ~has, jnp.int32(Kind.PAD), jnp.asarray(full))


# ----------------------------------------------------------------------------------------------
# Payload values


def patchify(frame):
    """[..., H, W, 3] frame(s) → [..., rows*cols, 40, 40, 3] patches, row-major (cell = row*cols + col).

    Works on numpy and JAX arrays; H and W must be multiples of PATCH_SIZE.
    """
    xp = _xp(frame)
    frame = xp.asarray(frame)
    if frame.ndim < 3 or frame.shape[-1] != 3:
        raise ValueError(f"patchify expects frames shaped [..., H, W, 3], got {frame.shape}")
    h, w = frame.shape[-3], frame.shape[-2]
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise ValueError(f"frame size {h}×{w} is not a multiple of the {PATCH_SIZE}-pixel patch")
    rows, cols = h // PATCH_SIZE, w // PATCH_SIZE
    lead = frame.shape[:-3]
    x = frame.reshape(*lead, rows, PATCH_SIZE, cols, PATCH_SIZE, 3)
    x = xp.swapaxes(x, -4, -3)  # [..., rows, cols, 40, 40, 3]
    return x.reshape(*lead, rows * cols, PATCH_SIZE, PATCH_SIZE, 3)


def dmel_grid(cfg: StreamConfig) -> np.ndarray:
    """The float32 log-mel value of each dMel level: dmel_levels points evenly spaced on [min, max]."""
    return np.linspace(cfg.dmel_min, cfg.dmel_max, cfg.dmel_levels, dtype=np.float64).astype(np.float32)


def quantize_dmel(logmel, cfg: StreamConfig):
    """log10-mel → uint8 dMel level: the nearest grid point; values outside [dmel_min, dmel_max] clip.

    The level is the number of float32 midpoints between grid points that the value exceeds (a value
    exactly on a midpoint takes the lower level), so numpy and jitted XLA code agree bit for bit: an
    arithmetic `round((x − min) / step)` does not, as XLA may turn the division into a multiplication
    and round a tie the other way (training quantises AUDIO_OUT with numpy, serving inside `microturn`).
    """
    xp = _xp(logmel)
    x = xp.asarray(logmel)
    if not xp.issubdtype(x.dtype, xp.floating) or x.dtype.itemsize < 4:
        x = x.astype(xp.float32)
    grid = dmel_grid(cfg)
    midpoints = xp.asarray((grid[:-1] + grid[1:]) / np.float32(2), x.dtype)
    return xp.sum(x[..., None] > midpoints, axis=-1).astype(xp.uint8)


def dequantize_dmel(levels, cfg: StreamConfig):
    """uint8 dMel levels → float32 log10-mel (the grid value of each level)."""
    xp = _xp(levels)
    levels = xp.asarray(levels)
    return xp.asarray(dmel_grid(cfg))[levels.astype(xp.int32)]


def normalize_mel(logmel, cfg: StreamConfig):
    """log10-mel → the flow head's normalised space: (logmel - mel_mean) / mel_std."""
    return (logmel - cfg.mel_mean) / cfg.mel_std


def denormalize_mel(x, cfg: StreamConfig):
    """Inverse of `normalize_mel`."""
    return x * cfg.mel_std + cfg.mel_mean


# ----------------------------------------------------------------------------------------------
# Windows


@dataclasses.dataclass(frozen=True)
class ChunkPayload:
    """What one chunk carries, as produced by data/ and consumed by `assemble_window`."""

    audio_in: np.ndarray  # uint8 [audio_slots, stack, n_mels] dMel levels of the user's audio
    text_in: np.ndarray  # int32 [text_in_slots] (PAD where nothing)
    text_out: np.ndarray  # int32 [text_out_slots] (PAD where the model says nothing)
    audio_out_mel: np.ndarray  # float32 [audio_slots, stack, n_mels] log10-mel the model speaks (silence = dmel_min)
    frame: np.ndarray | None = None  # uint8 [H, W, 3] when chunk_has_frame(k), else None


def _check_payload(cfg: StreamConfig, i: int, k: int, chunk) -> dict[str, np.ndarray]:
    """Validated numpy fields of one payload; ValueError naming the chunk and the field otherwise."""
    where = f"chunk {i} (stream chunk {k})"
    if not isinstance(chunk, ChunkPayload):
        raise ValueError(f"{where}: expected a ChunkPayload, got {type(chunk).__name__}")
    audio_shape = (cfg.audio_slots, cfg.stack, cfg.n_mels)
    out: dict[str, np.ndarray] = {}

    def array(name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
        value = getattr(chunk, name)
        if value is None:
            raise ValueError(f"{where}: {name} is None, expected an array of shape {shape}")
        a = np.asarray(value)
        if a.shape != shape:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape}")
        if kind == "uint8" and a.dtype != np.uint8:
            raise ValueError(f"{where}: {name} has dtype {a.dtype}, expected uint8")
        if kind == "int" and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{where}: {name} has dtype {a.dtype}, expected integer token ids (int32)")
        if kind == "float" and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{where}: {name} has dtype {a.dtype}, expected float32 log-mel")
        return a

    out["audio_in"] = array("audio_in", audio_shape, "uint8")
    if out["audio_in"].size and int(out["audio_in"].max()) >= cfg.dmel_levels:
        raise ValueError(
            f"{where}: audio_in holds level {int(out['audio_in'].max())}, "
            f"expected dMel levels in [0, {cfg.dmel_levels})"
        )
    for name, slots in (("text_in", cfg.text_in_slots), ("text_out", cfg.text_out_slots)):
        a = array(name, (slots,), "int")
        bad = (a < 0) | (a >= tokenizer.NUM_IDS)
        if bad.any():
            raise ValueError(
                f"{where}: {name} holds id {int(a[bad][0])}, expected token ids in [0, {tokenizer.NUM_IDS})"
            )
        out[name] = a.astype(np.int32)
    mel = array("audio_out_mel", audio_shape, "float")
    if not np.isfinite(mel).all():
        raise ValueError(f"{where}: audio_out_mel holds non-finite values")
    out["audio_out_mel"] = mel.astype(np.float32)
    if chunk_has_frame(cfg, k):
        if chunk.frame is None:
            raise ValueError(
                f"{where}: frame is missing, but the layout puts a frame in every chunk k with "
                f"k % video_every == 0 (video_every={cfg.video_every})"
            )
        out["frame"] = array("frame", (cfg.frame_height, cfg.frame_width, 3), "uint8")
    elif chunk.frame is not None:
        reason = "video is off" if not cfg.video else f"k % video_every != 0 (video_every={cfg.video_every})"
        raise ValueError(f"{where}: frame is present, but the layout has no frame in this chunk ({reason})")
    return out


def assemble_window(cfg: StreamConfig, start_chunk: int, chunks: Sequence[ChunkPayload]) -> dict[str, np.ndarray]:
    """Lay out chunks start_chunk … start_chunk+len(chunks)-1 as one stream row (no batch axis).

    Returns, with T = window_length(cfg, n), Na = num_audio_entries, Np = num_patch_entries:
      kind int32 [T], position int32 [T] (global), text int32 [T] (PAD off text tokens),
      audio uint8 [Na, stack, n_mels] (dMel of every AUDIO_IN and AUDIO_OUT token in order),
      audio_index int32 [Na], audio_mel float32 [Na, stack, n_mels] (AUDIO_OUT targets, 0 for inputs),
      patches uint8 [Np, 40, 40, 3], patch_index int32 [Np], patch_cell int32 [Np].
    """
    start_chunk = _check_chunk_index(start_chunk, "start_chunk")
    if cfg.video and start_chunk % cfg.video_every:
        raise ValueError(
            f"start_chunk {start_chunk} is not aligned to video_every={cfg.video_every}; windows must start "
            "on a frame chunk so every window has the same length"
        )
    chunks = list(chunks)
    if not chunks:
        raise ValueError("chunks is empty; a window needs at least one chunk")
    n = len(chunks)
    T = window_length(cfg, n)
    na, n_patches = num_audio_entries(cfg, n), num_patch_entries(cfg, n)
    stack, n_mels, a_slots = cfg.stack, cfg.n_mels, cfg.audio_slots

    kind = np.empty(T, np.int32)
    text = np.full(T, tokenizer.PAD, np.int32)
    audio = np.empty((na, stack, n_mels), np.uint8)
    audio_index = np.empty(na, np.int32)
    audio_mel = np.zeros((na, stack, n_mels), np.float32)
    patches = np.empty((n_patches, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
    patch_index = np.empty(n_patches, np.int32)
    patch_cell = np.empty(n_patches, np.int32)

    t = a = p = 0  # write cursors: token, audio entry, patch entry
    for i, chunk in enumerate(chunks):
        k = start_chunk + i
        f = _check_payload(cfg, i, k, chunk)
        kinds = chunk_kinds(cfg, k)
        kind[t : t + len(kinds)] = kinds
        # AUDIO_IN
        audio[a : a + a_slots] = f["audio_in"]
        audio_index[a : a + a_slots] = np.arange(t, t + a_slots)
        a += a_slots
        t += a_slots
        # VIDEO_IN
        if "frame" in f:
            ppf = cfg.patches_per_frame
            patches[p : p + ppf] = patchify(f["frame"])
            patch_index[p : p + ppf] = np.arange(t, t + ppf)
            patch_cell[p : p + ppf] = np.arange(ppf)
            p += ppf
            t += ppf
        # TEXT_IN, TEXT_OUT
        text[t : t + cfg.text_in_slots] = f["text_in"]
        t += cfg.text_in_slots
        text[t : t + cfg.text_out_slots] = f["text_out"]
        t += cfg.text_out_slots
        # AUDIO_OUT: teacher forcing feeds its dMel; the target is the mel itself
        audio[a : a + a_slots] = quantize_dmel(f["audio_out_mel"], cfg)
        audio_mel[a : a + a_slots] = f["audio_out_mel"]
        audio_index[a : a + a_slots] = np.arange(t, t + a_slots)
        a += a_slots
        t += a_slots
    assert (t, a, p) == (T, na, n_patches), (t, a, p, T, na, n_patches)

    start = chunk_start(cfg, start_chunk)
    return {
        "kind": kind,
        "position": np.arange(start, start + T, dtype=np.int32),
        "text": text,
        "audio": audio,
        "audio_index": audio_index,
        "audio_mel": audio_mel,
        "patches": patches,
        "patch_index": patch_index,
        "patch_cell": patch_cell,
    }


def stack_windows(windows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Batch windows from `assemble_window` along a new leading axis (same keys and shapes required)."""
    windows = list(windows)
    if not windows:
        raise ValueError("stack_windows needs at least one window")
    keys = set(windows[0])
    for i, w in enumerate(windows[1:], 1):
        if set(w) != keys:
            raise ValueError(f"window {i} has keys {sorted(w)}, window 0 has {sorted(keys)}")
    out = {}
    for key in windows[0]:
        shapes = {np.shape(w[key]) for w in windows}
        if len(shapes) > 1:
            raise ValueError(f"windows disagree on the shape of {key!r}: {sorted(shapes)}")
        out[key] = np.stack([np.asarray(w[key]) for w in windows])
    return out


# ----------------------------------------------------------------------------------------------
# Targets (jnp, jit-friendly)


def text_targets(kind, text, pad_weight, decision_weight=1.0):
    """Text targets for the hidden state at each token: the next token's text, weighted where it is TEXT_OUT.

    kind, text int32 [..., T] → targets int32 [..., T] = text[..., t+1] (PAD in the last column) and
    weights float32 [..., T] = (kind[t+1] == TEXT_OUT) × (pad_weight if text[t+1] == PAD else 1)
    × (decision_weight if slot t+1 is a decision slot else 1), with the last column 0.

    A decision slot is a TEXT_OUT slot where the model is silent and decides whether to start: its
    target is PAD, SPEAK or DELEGATE, and the last TEXT_OUT token other than PAD before it is EOT or
    END_DELEGATE (or there is none in the window). Weighing PAD and the start tokens there alike leaves
    their ratio at pad_weight, so the PAD calibration (`model/step.py: pad_logit_bias`) still holds; it
    only gives the rare decision a larger share of the gradient than the words that follow it.
    """
    kind = jnp.asarray(kind)
    text = jnp.asarray(text)
    next_text = jnp.concatenate([text[..., 1:], jnp.full_like(text[..., :1], tokenizer.PAD)], axis=-1)
    next_kind = jnp.concatenate([kind[..., 1:], jnp.full_like(kind[..., :1], Kind.PAD)], axis=-1)
    per_token = jnp.where(next_text == tokenizer.PAD, jnp.asarray(pad_weight, jnp.float32), jnp.float32(1.0))
    if not (isinstance(decision_weight, (int, float)) and decision_weight == 1.0):  # off: no scan in the step
        per_token = per_token * jnp.where(
            _decision_slots(next_kind, next_text), jnp.asarray(decision_weight, jnp.float32), jnp.float32(1.0)
        )
    weights = jnp.where(next_kind == Kind.TEXT_OUT, per_token, jnp.float32(0.0))
    return next_text.astype(jnp.int32), weights.astype(jnp.float32)


def _decision_slots(kind, text):
    """bool [..., T]: TEXT_OUT slots where the model is silent and its target is PAD, SPEAK or DELEGATE
    (see `text_targets`)."""
    said = (kind == Kind.TEXT_OUT) & (text != tokenizer.PAD)
    positions = jnp.arange(text.shape[-1], dtype=jnp.int32)
    last = jax.lax.cummax(jnp.where(said, positions, -1), axis=text.ndim - 1)
    before = jnp.concatenate([jnp.full_like(last[..., :1], -1), last[..., :-1]], axis=-1)  # strictly before t
    last_token = jnp.take_along_axis(text, jnp.maximum(before, 0), axis=-1)
    silent = (before < 0) | (last_token == tokenizer.EOT) | (last_token == tokenizer.END_DELEGATE)
    starts = (text == tokenizer.PAD) | (text == tokenizer.SPEAK) | (text == tokenizer.DELEGATE)
    return (kind == Kind.TEXT_OUT) & silent & starts


def audio_out_entries(kind, audio_index):
    """bool [..., Na]: whether each audio entry belongs to an AUDIO_OUT token (out-of-range index → False).

    kind [..., T], audio_index [..., Na]. The flow target of entry j is predicted from the hidden state
    at audio_index[j] - 1.
    """
    kind = jnp.asarray(kind)
    audio_index = jnp.asarray(audio_index)
    T = kind.shape[-1]
    if T == 0:
        return jnp.zeros(audio_index.shape, bool)
    valid = (audio_index >= 0) & (audio_index < T)
    k = jnp.take_along_axis(kind, jnp.clip(audio_index, 0, T - 1), axis=-1)
    return valid & (k == Kind.AUDIO_OUT)


def decision_tokens(kind, num_chunks: int):
    """int32 [..., C]: the index of each chunk's last input token, whose hidden state predicts the chunk's
    first TEXT_OUT slot: where the model, having heard the chunk, decides whether to speak in it.

    kind int32 [..., T] of a window of `num_chunks` chunks (jnp, jit-friendly)."""
    kind = jnp.asarray(kind)
    positions = jnp.arange(kind.shape[-1], dtype=jnp.int32)
    next_kind = jnp.concatenate([kind[..., 1:], jnp.full_like(kind[..., :1], Kind.PAD)], axis=-1)
    last_input = (kind != Kind.TEXT_OUT) & (next_kind == Kind.TEXT_OUT)
    return jnp.sort(jnp.where(last_input, positions, kind.shape[-1]), axis=-1)[..., :num_chunks]
