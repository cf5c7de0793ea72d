"""The micro-turn layout: kinds, positions, payload packing and targets (DESIGN §4)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import stream, tokenizer
from interaction_jax.config import PATCH_SIZE, StreamConfig
from interaction_jax.stream import Kind

PAD = tokenizer.PAD


def make_chunk(cfg: StreamConfig, k: int, rng: np.random.Generator, **changes) -> stream.ChunkPayload:
    shape = (cfg.audio_slots, cfg.stack, cfg.n_mels)
    frame = None
    if stream.chunk_has_frame(cfg, k):
        frame = rng.integers(0, 256, (cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8)
    payload = stream.ChunkPayload(
        audio_in=rng.integers(0, cfg.dmel_levels, shape, dtype=np.uint8),
        text_in=rng.integers(0, tokenizer.NUM_IDS, cfg.text_in_slots).astype(np.int32),
        text_out=rng.integers(0, tokenizer.NUM_IDS, cfg.text_out_slots).astype(np.int32),
        audio_out_mel=rng.uniform(cfg.dmel_min, cfg.dmel_max, shape).astype(np.float32),
        frame=frame,
    )
    return dataclasses.replace(payload, **changes)


def make_window(cfg: StreamConfig, start: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    chunks = [make_chunk(cfg, start + i, rng) for i in range(n)]
    return chunks, stream.assemble_window(cfg, start, chunks)


CONFIGS = [
    StreamConfig(),
    StreamConfig(video_every=1),
    StreamConfig(video_every=3, stack=1),
    StreamConfig(video_every=5, chunk_ms=100, stack=1),
    StreamConfig(video_every=3, chunk_ms=100, stack=2, frame_height=120, frame_width=80),
    StreamConfig(video=False),
    StreamConfig(video=False, chunk_ms=100, stack=1, text_in_slots=2, text_out_slots=3),
]


# ----------------------------------------------------------------------------------------------
# Layout


def test_default_layout_counts():
    cfg = StreamConfig()
    assert (cfg.audio_slots, cfg.patches_per_frame, cfg.text_in_slots, cfg.text_out_slots) == (4, 4, 4, 4)
    A, V, TI, TO, AO = Kind.AUDIO_IN, Kind.VIDEO_IN, Kind.TEXT_IN, Kind.TEXT_OUT, Kind.AUDIO_OUT
    np.testing.assert_array_equal(stream.chunk_kinds(cfg, 0), [A] * 4 + [V] * 4 + [TI] * 4 + [TO] * 4 + [AO] * 4)
    np.testing.assert_array_equal(stream.chunk_kinds(cfg, 1), [A] * 4 + [TI] * 4 + [TO] * 4 + [AO] * 4)
    np.testing.assert_array_equal(stream.output_kinds(cfg), [TO] * 4 + [AO] * 4)
    np.testing.assert_array_equal(stream.input_kinds(cfg, 10), [A] * 4 + [V] * 4 + [TI] * 4)
    assert [stream.chunk_has_frame(cfg, k) for k in range(11)] == [k % 5 == 0 for k in range(11)]
    assert [stream.chunk_length(cfg, k) for k in range(6)] == [20, 16, 16, 16, 16, 20]
    for k in range(7):
        kinds = stream.chunk_kinds(cfg, k)
        assert kinds.dtype == np.int32
        assert len(kinds) == stream.chunk_length(cfg, k)
    assert stream.max_input_block(cfg) == 12
    assert stream.NUM_KINDS == len(Kind) == 6
    assert stream.OUTPUT_KINDS == (Kind.TEXT_OUT, Kind.AUDIO_OUT)


def test_video_off_has_no_video_tokens():
    cfg = StreamConfig(video=False)
    assert not any(stream.chunk_has_frame(cfg, k) for k in range(10))
    assert all(Kind.VIDEO_IN not in stream.chunk_kinds(cfg, k) for k in range(10))
    assert stream.max_input_block(cfg) == 8
    assert stream.window_length(cfg, 10) == 160


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_chunk_start_closed_form_matches_cumulative_lengths(cfg):
    lengths = [stream.chunk_length(cfg, k) for k in range(31)]
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    assert [stream.chunk_start(cfg, k) for k in range(32)] == cumulative.tolist()
    # An aligned window of n chunks spans exactly chunk_start(s + n) - chunk_start(s) tokens.
    step = cfg.video_every if cfg.video else 1
    for s in (0, step, 3 * step):
        for n in (1, 2, step, 2 * step, 7):
            assert stream.window_length(cfg, n) == stream.chunk_start(cfg, s + n) - stream.chunk_start(cfg, s)
            assert stream.window_length(cfg, n) == sum(stream.chunk_length(cfg, s + i) for i in range(n))


def test_chunk_start_rejects_negative():
    with pytest.raises(ValueError, match="k must be >= 0"):
        stream.chunk_start(StreamConfig(), -1)


@pytest.mark.parametrize("cfg", [StreamConfig(), StreamConfig(video_every=3, stack=1), StreamConfig(video=False)])
def test_window_positions_contiguous(cfg):
    n = 2 * (cfg.video_every if cfg.video else 2)
    _, w0 = make_window(cfg, 0, n)
    _, w1 = make_window(cfg, n, n, seed=1)
    assert w0["position"].dtype == np.int32
    np.testing.assert_array_equal(np.diff(w0["position"]), 1)
    assert w0["position"][0] == 0
    assert w1["position"][0] == w0["position"][-1] + 1 == stream.chunk_start(cfg, n)
    # kinds of the window are the chunks' kinds end to end
    np.testing.assert_array_equal(w1["kind"], np.concatenate([stream.chunk_kinds(cfg, n + i) for i in range(n)]))


def test_input_block_kinds_pads_video_slots():
    cfg = StreamConfig()
    with_frame = np.asarray(stream.input_block_kinds(cfg, True))
    without = np.asarray(stream.input_block_kinds(cfg, False))
    np.testing.assert_array_equal(with_frame, stream.input_kinds(cfg, 0))
    A, TI = Kind.AUDIO_IN, Kind.TEXT_IN
    np.testing.assert_array_equal(without, [A] * 4 + [Kind.PAD] * 4 + [TI] * 4)
    batched = jax.jit(lambda h: stream.input_block_kinds(cfg, h))(jnp.array([True, False, True]))
    assert batched.shape == (3, stream.max_input_block(cfg)) and batched.dtype == jnp.int32
    np.testing.assert_array_equal(batched, np.stack([with_frame, without, with_frame]))
    # With video off there are no video slots to pad.
    off = StreamConfig(video=False)
    np.testing.assert_array_equal(stream.input_block_kinds(off, False), stream.input_kinds(off, 0))


# ----------------------------------------------------------------------------------------------
# Patches


def unpatchify(patches, rows, cols):
    lead = patches.shape[:-4]
    x = patches.reshape(*lead, rows, cols, PATCH_SIZE, PATCH_SIZE, 3)
    x = np.swapaxes(x, -4, -3)
    return x.reshape(*lead, rows * PATCH_SIZE, cols * PATCH_SIZE, 3)


def test_patchify_order_and_round_trip():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
    patches = stream.patchify(frame)
    assert patches.shape == (6, 40, 40, 3) and patches.dtype == np.uint8
    for r in range(2):
        for c in range(3):
            np.testing.assert_array_equal(patches[r * 3 + c], frame[r * 40 : (r + 1) * 40, c * 40 : (c + 1) * 40])
    np.testing.assert_array_equal(unpatchify(patches, 2, 3), frame)
    # Batched, and the same on JAX arrays (returned as JAX arrays).
    frames = rng.integers(0, 256, (2, 3, 120, 80, 3), dtype=np.uint8)
    batched = stream.patchify(frames)
    assert batched.shape == (2, 3, 6, 40, 40, 3)
    np.testing.assert_array_equal(batched[1, 2], stream.patchify(frames[1, 2]))
    np.testing.assert_array_equal(unpatchify(batched, 3, 2), frames)
    as_jax = jax.jit(stream.patchify)(jnp.asarray(frames))
    assert isinstance(as_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(as_jax), batched)


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not a multiple of the 40-pixel patch"):
        stream.patchify(np.zeros((50, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[..., H, W, 3\]"):
        stream.patchify(np.zeros((80, 80), np.uint8))


# ----------------------------------------------------------------------------------------------
# dMel and mel normalisation


def test_quantize_levels_round_trip_and_clipping():
    cfg = StreamConfig()
    step = (cfg.dmel_max - cfg.dmel_min) / (cfg.dmel_levels - 1)
    assert step == pytest.approx(0.6)
    rng = np.random.default_rng(0)
    x = rng.uniform(cfg.dmel_min, cfg.dmel_max, (1000,)).astype(np.float32)
    levels = stream.quantize_dmel(x, cfg)
    assert levels.dtype == np.uint8 and levels.min() >= 0 and levels.max() < cfg.dmel_levels
    back = stream.dequantize_dmel(levels, cfg)
    assert back.dtype == np.float32
    assert np.abs(back - x).max() <= step / 2 + 1e-5
    assert levels.min() == 0 and levels.max() == cfg.dmel_levels - 1  # the whole range is used
    # Exact on the grid: each grid value maps to its own level and back to itself.
    grid = np.linspace(cfg.dmel_min, cfg.dmel_max, cfg.dmel_levels).astype(np.float32)
    np.testing.assert_array_equal(stream.quantize_dmel(grid, cfg), np.arange(cfg.dmel_levels))
    np.testing.assert_array_equal(stream.dequantize_dmel(np.arange(16, dtype=np.uint8), cfg), grid)
    assert stream.dequantize_dmel(np.uint8(0), cfg) == -7.0 and stream.dequantize_dmel(np.uint8(15), cfg) == 2.0
    # Nearest level: just either side of a midpoint between levels 3 and 4.
    mid = cfg.dmel_min + 3.5 * step
    np.testing.assert_array_equal(stream.quantize_dmel(np.array([mid - 0.01, mid + 0.01]), cfg), [3, 4])
    # Values outside [dmel_min, dmel_max] clip.
    np.testing.assert_array_equal(stream.quantize_dmel(np.array([-100.0, -7.2, 2.2, 50.0]), cfg), [0, 0, 15, 15])


def test_quantize_jax_matches_numpy():
    cfg = StreamConfig()
    x = np.random.default_rng(1).uniform(-9, 4, (3, 2, 80)).astype(np.float32)
    q_np = stream.quantize_dmel(x, cfg)
    q_jax = jax.jit(lambda v: stream.quantize_dmel(v, cfg))(jnp.asarray(x))
    assert isinstance(q_jax, jax.Array) and q_jax.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(q_jax), q_np)
    d_jax = jax.jit(lambda v: stream.dequantize_dmel(v, cfg))(q_jax)
    assert d_jax.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(d_jax), stream.dequantize_dmel(q_np, cfg))


def test_normalize_mel_round_trip():
    cfg = StreamConfig()
    x = np.array([-7.0, -2.5, 2.0], np.float32)
    y = stream.normalize_mel(x, cfg)
    np.testing.assert_allclose(y, [-2.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(stream.denormalize_mel(y, cfg), x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stream.normalize_mel(jnp.asarray(x), cfg)), y, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Windows


def test_assemble_window_places_payloads():
    cfg = StreamConfig()
    start, n = 5, 10
    chunks, w = make_window(cfg, start, n)
    T = stream.window_length(cfg, n)
    na, npatch = stream.num_audio_entries(cfg, n), stream.num_patch_entries(cfg, n)
    assert (T, na, npatch) == (10 * 16 + 2 * 4, 80, 8)
    expected = {
        "kind": ((T,), np.int32),
        "position": ((T,), np.int32),
        "text": ((T,), np.int32),
        "audio": ((na, 2, 80), np.uint8),
        "audio_index": ((na,), np.int32),
        "audio_mel": ((na, 2, 80), np.float32),
        "patches": ((npatch, 40, 40, 3), np.uint8),
        "patch_index": ((npatch,), np.int32),
        "patch_cell": ((npatch,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in w.items()} == expected
    np.testing.assert_array_equal(w["position"], stream.chunk_start(cfg, start) + np.arange(T))

    kind = w["kind"]
    # Text: TEXT_IN tokens hold text_in, TEXT_OUT tokens hold text_out, everything else PAD.
    np.testing.assert_array_equal(w["text"][kind == Kind.TEXT_IN], np.concatenate([c.text_in for c in chunks]))
    np.testing.assert_array_equal(w["text"][kind == Kind.TEXT_OUT], np.concatenate([c.text_out for c in chunks]))
    assert (w["text"][(kind != Kind.TEXT_IN) & (kind != Kind.TEXT_OUT)] == PAD).all()
    # Chunk 2 of the window (stream chunk 7, no frame) starts at 20 + 16: its 4 text-in ids are at 40..43.
    np.testing.assert_array_equal(w["text"][40:44], chunks[2].text_in)
    np.testing.assert_array_equal(w["text"][44:48], chunks[2].text_out)

    # Audio entries: one per AUDIO token, in order of appearance.
    audio_tokens = np.flatnonzero((kind == Kind.AUDIO_IN) | (kind == Kind.AUDIO_OUT))
    np.testing.assert_array_equal(w["audio_index"], audio_tokens)
    is_out = kind[w["audio_index"]] == Kind.AUDIO_OUT
    np.testing.assert_array_equal(w["audio"][~is_out], np.concatenate([c.audio_in for c in chunks]))
    out_mel = np.concatenate([c.audio_out_mel for c in chunks])
    np.testing.assert_array_equal(w["audio_mel"][is_out], out_mel)
    np.testing.assert_array_equal(w["audio"][is_out], stream.quantize_dmel(out_mel, cfg))
    assert (w["audio_mel"][~is_out] == 0).all()
    # The first chunk (stream chunk 5, a frame chunk) has audio in at tokens 0..3, audio out at 16..19.
    np.testing.assert_array_equal(w["audio_index"][:8], [0, 1, 2, 3, 16, 17, 18, 19])
    np.testing.assert_array_equal(w["audio"][2], chunks[0].audio_in[2])
    np.testing.assert_array_equal(w["audio_mel"][5], chunks[0].audio_out_mel[1])

    # Patches: frames of stream chunks 5 and 10 (window chunks 0 and 5), row-major cells.
    np.testing.assert_array_equal(w["patch_index"], np.flatnonzero(kind == Kind.VIDEO_IN))
    np.testing.assert_array_equal(w["patch_index"], [4, 5, 6, 7, 88, 89, 90, 91])
    np.testing.assert_array_equal(w["patch_cell"], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(w["patches"][1], chunks[0].frame[0:40, 40:80])
    np.testing.assert_array_equal(w["patches"][6], chunks[5].frame[40:80, 0:40])
    assert all(c.frame is None for i, c in enumerate(chunks) if i not in (0, 5))


def test_assemble_window_without_video():
    cfg = StreamConfig(video=False, text_out_slots=2)
    chunks, w = make_window(cfg, 3, 4)  # any start works without video
    assert w["kind"].shape == (4 * 14,)
    assert w["patches"].shape == (0, 40, 40, 3) and w["patches"].dtype == np.uint8
    assert w["patch_index"].shape == (0,) and w["patch_cell"].shape == (0,)
    assert w["position"][0] == 3 * 14
    np.testing.assert_array_equal(w["text"][8:10], chunks[0].text_out)  # after 4 audio in, 4 text in


def test_stack_windows_adds_batch_axis():
    cfg = StreamConfig()
    _, a = make_window(cfg, 0, 5, seed=0)
    _, b = make_window(cfg, 10, 5, seed=1)
    batch = stream.stack_windows([a, b])
    assert batch["kind"].shape == (2, stream.window_length(cfg, 5))
    assert batch["patches"].shape == (2, 4, 40, 40, 3)
    np.testing.assert_array_equal(batch["position"][1], b["position"])
    np.testing.assert_array_equal(batch["audio"][0], a["audio"])
    _, c = make_window(cfg, 0, 10)
    with pytest.raises(ValueError, match="disagree on the shape of 'kind'"):
        stream.stack_windows([a, c])
    with pytest.raises(ValueError, match="at least one window"):
        stream.stack_windows([])


def _bad(cfg, k, **changes):
    return make_chunk(cfg, k, np.random.default_rng(0), **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"audio_in": np.zeros((4, 2, 79), np.uint8)}, r"chunk 1 \(stream chunk 1\): audio_in has shape \(4, 2, 79\)"),
        ({"audio_in": np.zeros((4, 2, 80), np.int32)}, r"chunk 1 \(stream chunk 1\): audio_in has dtype int32"),
        ({"audio_in": np.full((4, 2, 80), 16, np.uint8)}, r"audio_in holds level 16"),
        ({"text_in": np.zeros(3, np.int32)}, r"chunk 1 \(stream chunk 1\): text_in has shape \(3,\)"),
        ({"text_out": np.zeros(4, np.float32)}, r"text_out has dtype float32"),
        ({"text_out": np.array([1, 2, tokenizer.NUM_IDS, 3])}, r"text_out holds id 263"),
        ({"text_in": np.array([1, -1, 2, 3])}, r"text_in holds id -1"),
        ({"audio_out_mel": np.zeros((4, 2, 80), np.uint8)}, r"audio_out_mel has dtype uint8"),
        ({"audio_out_mel": np.zeros((4, 1, 80), np.float32)}, r"audio_out_mel has shape \(4, 1, 80\)"),
        ({"audio_out_mel": np.full((4, 2, 80), np.nan, np.float32)}, r"audio_out_mel holds non-finite"),
        ({"frame": np.zeros((80, 80, 3), np.uint8)}, r"chunk 1 \(stream chunk 1\): frame is present"),
    ],
)
def test_assemble_window_rejects_bad_payloads(changes, message):
    cfg = StreamConfig()
    rng = np.random.default_rng(0)
    chunks = [make_chunk(cfg, 0, rng), make_chunk(cfg, 1, rng, **changes), make_chunk(cfg, 2, rng)]
    with pytest.raises(ValueError, match=message):
        stream.assemble_window(cfg, 0, chunks)


def test_assemble_window_rejects_bad_frames_and_starts():
    cfg = StreamConfig()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"chunk 0 \(stream chunk 5\): frame is missing"):
        stream.assemble_window(cfg, 5, [make_chunk(cfg, 5, rng, frame=None)])
    with pytest.raises(ValueError, match=r"chunk 0 \(stream chunk 0\): frame has shape \(40, 80, 3\)"):
        stream.assemble_window(cfg, 0, [make_chunk(cfg, 0, rng, frame=np.zeros((40, 80, 3), np.uint8))])
    with pytest.raises(ValueError, match=r"frame has dtype float32"):
        stream.assemble_window(cfg, 0, [make_chunk(cfg, 0, rng, frame=np.zeros((80, 80, 3), np.float32))])
    with pytest.raises(ValueError, match="start_chunk 3 is not aligned to video_every=5"):
        stream.assemble_window(cfg, 3, [make_chunk(cfg, 3, rng)])
    with pytest.raises(ValueError, match="chunks is empty"):
        stream.assemble_window(cfg, 0, [])
    with pytest.raises(ValueError, match="expected a ChunkPayload, got dict"):
        stream.assemble_window(cfg, 0, [{"audio_in": None}])
    off = StreamConfig(video=False)
    with pytest.raises(ValueError, match=r"frame is present, .*video is off"):
        stream.assemble_window(off, 0, [make_chunk(off, 0, rng, frame=np.zeros((80, 80, 3), np.uint8))])


def test_assemble_window_accepts_int64_text():
    cfg = StreamConfig()
    chunk = make_chunk(cfg, 0, np.random.default_rng(0), text_in=np.array([104, 105, PAD, PAD]))
    w = stream.assemble_window(cfg, 0, [chunk])
    assert w["text"].dtype == np.int32
    np.testing.assert_array_equal(w["text"][8:12], [104, 105, PAD, PAD])


# ----------------------------------------------------------------------------------------------
# Targets


def test_text_targets_by_hand():
    A, TI, TO, AO = Kind.AUDIO_IN, Kind.TEXT_IN, Kind.TEXT_OUT, Kind.AUDIO_OUT
    kind = jnp.array([[A, TI, TO, TO, AO, TO], [TI, TO, TO, TO, AO, AO]], jnp.int32)
    text = jnp.array([[PAD, 7, 65, PAD, PAD, 66], [9, PAD, 67, 68, PAD, PAD]], jnp.int32)
    targets, weights = jax.jit(stream.text_targets)(kind, text, 0.25)
    np.testing.assert_array_equal(targets, [[7, 65, PAD, PAD, 66, PAD], [PAD, 67, 68, PAD, PAD, PAD]])
    np.testing.assert_allclose(weights, [[0, 1, 0.25, 0, 1, 0], [0.25, 1, 1, 0, 0, 0]])
    assert targets.shape == weights.shape == (2, 6)
    assert targets.dtype == jnp.int32 and weights.dtype == jnp.float32


def test_decision_slots_weigh_the_silent_choice_by_hand():
    """Only the TEXT_OUT slots where the model is silent (nothing said yet, or after EOT / END_DELEGATE)
    and whose target is PAD, SPEAK or DELEGATE take `decision_weight`; PAD inside an utterance and the
    bytes of a word do not."""
    TI, TO = Kind.TEXT_IN, Kind.TEXT_OUT
    from interaction_jax.tokenizer import DELEGATE, END_DELEGATE, EOT, SPEAK

    # a slot per column: PAD, SPEAK 'h' 'i' PAD EOT PAD DELEGATE 'x' END_DELEGATE PAD, then a TEXT_IN 'q'
    said = [PAD, SPEAK, 104, 105, PAD, EOT, PAD, DELEGATE, 120, END_DELEGATE, PAD]
    kind = jnp.array([TI] + [TO] * len(said) + [TI], jnp.int32)
    text = jnp.array([PAD, *said, 113], jnp.int32)
    _, weights = stream.text_targets(kind, text, 0.5, 4.0)
    decision = [True, True, False, False, False, False, True, True, False, False, True]
    expected = [
        (0.5 if token == PAD else 1.0) * (4.0 if is_decision else 1.0)
        for token, is_decision in zip(said, decision, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(weights), [*expected, 0.0, 0.0])
    # control: with decision_weight 1 the weights are the plain PAD weighting
    _, plain = stream.text_targets(kind, text, 0.5)
    np.testing.assert_allclose(np.asarray(plain), [*(0.5 if t == PAD else 1.0 for t in said), 0.0, 0.0])


def test_text_targets_last_column_is_unweighted_on_a_real_window():
    cfg = StreamConfig()
    _, w = make_window(cfg, 0, 5)
    batch = stream.stack_windows([w])
    targets, weights = stream.text_targets(batch["kind"], batch["text"], 1.0)
    targets, weights = np.asarray(targets)[0], np.asarray(weights)[0]
    is_out = w["kind"] == Kind.TEXT_OUT
    # Every TEXT_OUT token (and only those) is the target of the token just before it.
    np.testing.assert_array_equal(np.flatnonzero(weights), np.flatnonzero(is_out) - 1)
    np.testing.assert_array_equal(targets[np.flatnonzero(is_out) - 1], w["text"][is_out])
    assert weights[-1] == 0


def test_audio_out_entries():
    cfg = StreamConfig()
    _, w = make_window(cfg, 0, 5)
    batch = stream.stack_windows([w, w])
    mask = jax.jit(stream.audio_out_entries)(batch["kind"], batch["audio_index"])
    assert mask.shape == (2, stream.num_audio_entries(cfg, 5)) and mask.dtype == jnp.bool_
    expected = np.tile(np.array([False] * 4 + [True] * 4), 5)
    np.testing.assert_array_equal(mask[0], expected)
    # Unused entries (index out of range) are never AUDIO_OUT, even if a clamp would land on one.
    T = batch["kind"].shape[1]
    assert batch["kind"][0, T - 1] == Kind.AUDIO_OUT
    index = jnp.array([[T - 1, T, -1, 1000]])
    np.testing.assert_array_equal(stream.audio_out_entries(batch["kind"][:1], index), [[True, False, False, False]])
