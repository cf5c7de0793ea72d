"""Episode → stream rendering: text placement, windows that match stream.py, loss masks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from interaction_jax import stream, tokenizer
from interaction_jax.audio import features
from interaction_jax.config import StreamConfig
from interaction_jax.data import render
from interaction_jax.data.episode import Episode, TextEvent, frame_times
from interaction_jax.stream import chunk_samples

CFG = StreamConfig()


def synthetic_episode(cfg: StreamConfig = CFG, num_chunks: int = 23, seed: int = 0) -> Episode:
    """An episode built by hand (no scenario): noise audio, random frames, a few text events."""
    rng = np.random.default_rng(seed)
    n = num_chunks * chunk_samples(cfg)
    frames = None
    if cfg.video:
        shape = (len(frame_times(cfg, num_chunks)), cfg.frame_height, cfg.frame_width, 3)
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
    return Episode(
        scenario="synthetic",
        seed=seed,
        split="train",
        num_chunks=num_chunks,
        user_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
        frames=frames,
        user_text=(TextEvent(0.45, tuple(tokenizer.encode("hello there"))),),
        model_text=(TextEvent(1.0, tuple(tokenizer.encode("hi"))), TextEvent(1.2, (tokenizer.EOT,))),
        annotations={},
    )


def test_place_text_starts_in_the_covering_chunk_and_spills_in_order():
    events = [TextEvent(0.45, tuple(range(10))), TextEvent(0.41, (100,)), TextEvent(2.0, (200, 201))]
    placed, stats = render.place_text(events, num_chunks=12, slots=4, cfg=CFG)
    assert placed.shape == (12, 4) and placed.dtype == np.int32
    # chunk 2 covers [0.4, 0.6): the 0.41 event first (earlier time), then the 10-token run spills over
    assert placed[2].tolist() == [100, 0, 1, 2]
    assert placed[3].tolist() == [3, 4, 5, 6]
    assert placed[4].tolist() == [7, 8, 9, tokenizer.PAD]
    assert placed[10].tolist() == [200, 201, tokenizer.PAD, tokenizer.PAD]
    assert (placed[[0, 1, 5, 6, 7, 8, 9, 11]] == tokenizer.PAD).all()
    assert stats == render.RenderStats(delayed_events=0, dropped_tokens=0)  # 1 token ahead: still chunk 2


def test_place_text_counts_events_pushed_to_a_later_chunk():
    events = [TextEvent(0.0, tuple(range(6))), TextEvent(0.05, (100,)), TextEvent(0.2, (101,))]
    placed, stats = render.place_text(events, num_chunks=3, slots=4, cfg=CFG)
    assert placed[0].tolist() == [0, 1, 2, 3] and placed[1].tolist() == [4, 5, 100, 101]
    assert stats.delayed_events == 1  # 100 was due in chunk 0, landed in chunk 1; 101 landed on time


def test_place_text_counts_tokens_that_do_not_fit_before_the_end():
    placed, stats = render.place_text([TextEvent(0.5, tuple(range(9)))], num_chunks=4, slots=4, cfg=CFG)
    assert placed[2].tolist() == [0, 1, 2, 3] and placed[3].tolist() == [4, 5, 6, 7]
    assert stats.dropped_tokens == 1


def test_event_chunk_boundaries():
    assert render.event_chunk(0.0, CFG) == 0
    assert render.event_chunk(0.2, CFG) == 1  # a boundary belongs to the chunk it starts
    assert render.event_chunk(0.1999, CFG) == 0
    assert render.event_chunk(0.6, CFG) == 3  # 0.6 / 0.2 is 2.9999… in floating point


@pytest.mark.parametrize("video", [True, False])
def test_windows_match_stream_layout_for_every_chunk(video):
    cfg = dataclasses.replace(CFG, video=video)
    ep = synthetic_episode(cfg, num_chunks=23)
    payloads, _ = render.chunk_payloads(ep, cfg)
    wins = render.windows(payloads, cfg, window_chunks=10)
    assert len(wins) == 3  # 23 chunks → 10 + 10 + 3 (padded)
    for w, win in enumerate(wins):
        start = w * 10
        length = stream.window_length(cfg, 10)
        assert win["kind"].shape == (length,)
        np.testing.assert_array_equal(win["position"], np.arange(length) + stream.chunk_start(cfg, start))
        t = 0
        for k in range(start, start + 10):
            kinds = stream.chunk_kinds(cfg, k)
            np.testing.assert_array_equal(win["kind"][t : t + len(kinds)], kinds)
            t += len(kinds)
        assert win["audio"].shape == (stream.num_audio_entries(cfg, 10), cfg.stack, cfg.n_mels)
        assert win["patches"].shape[0] == stream.num_patch_entries(cfg, 10)
        assert win["loss_mask"].shape == (length,)


def test_window_payloads_are_the_episode_features():
    ep = synthetic_episode(num_chunks=10)
    payloads, stats = render.chunk_payloads(ep, CFG)
    assert stats.dropped_tokens == 0
    user = features.dmel(ep.user_audio, CFG)  # [40 tokens, stack, 80]
    for k, p in enumerate(payloads):
        np.testing.assert_array_equal(p.audio_in, user[4 * k : 4 * k + 4])
        assert (p.frame is not None) == stream.chunk_has_frame(CFG, k)
    np.testing.assert_array_equal(payloads[5].frame, ep.frames[1])
    mel = np.clip(features.log_mel(ep.model_audio, CFG), CFG.dmel_min, CFG.dmel_max)
    np.testing.assert_array_equal(payloads[3].audio_out_mel.reshape(-1, CFG.n_mels), mel[24:32])
    assert tokenizer.decode(payloads[2].text_in[payloads[2].text_in != tokenizer.PAD]) == "hell"
    assert payloads[5].text_out.tolist() == [*tokenizer.encode("hi"), tokenizer.PAD, tokenizer.PAD]
    assert payloads[6].text_out[0] == tokenizer.EOT


def test_last_window_is_padded_with_silence_and_masked():
    ep = synthetic_episode(num_chunks=13)
    wins = render.episode_windows(ep, CFG, window_chunks=10)
    assert len(wins) == 2
    assert (wins[0]["loss_mask"] == 1).all()
    last = wins[1]
    real = stream.chunk_start(CFG, 13) - stream.chunk_start(CFG, 10)
    assert (last["loss_mask"][:real] == 1).all() and (last["loss_mask"][real:] == 0).all()
    pad_start = real  # the first padded chunk (13) holds PAD text and silent audio
    pad_kinds = last["kind"][pad_start:]
    assert (last["text"][pad_start:][pad_kinds == stream.Kind.TEXT_OUT] == tokenizer.PAD).all()
    is_pad_audio = last["audio_index"] >= pad_start
    assert (last["audio"][is_pad_audio] == 0).all()  # level 0 is dmel_min: silence


def test_windows_reject_misaligned_window_length():
    payloads, _ = render.chunk_payloads(synthetic_episode(num_chunks=10), CFG)
    with pytest.raises(ValueError, match="multiple of video_every"):
        render.windows(payloads, CFG, window_chunks=7)


def test_bad_episode_is_refused_naming_the_field():
    ep = synthetic_episode(num_chunks=10)
    bad = dataclasses.replace(ep, user_audio=ep.user_audio[:-1])
    with pytest.raises(ValueError, match="user_audio"):
        render.chunk_payloads(bad, CFG)
    late = dataclasses.replace(ep, model_text=(TextEvent(2.5, (65,)),))
    with pytest.raises(ValueError, match="outside"):
        render.chunk_payloads(late, CFG)
