"""Audio front and back end: log-mel/dMel features, the Griffin-Lim vocoders, WAV and PCM16 helpers."""

import struct
import wave

import numpy as np
import pytest

from interaction_jax.audio import features, vocoder
from interaction_jax.audio.wav import from_pcm16, read_wav, to_pcm16, write_wav
from interaction_jax.config import StreamConfig
from interaction_jax.stream import chunk_samples, dequantize_dmel, quantize_dmel

CFG = StreamConfig()
SR = CFG.sample_rate
HOP = 400
WIN = 800


def voiced_signal(seconds: float = 3.0) -> np.ndarray:
    """float32 [seconds·sr]: harmonics of an f0 gliding 100 → 250 Hz under three formant-like bumps.

    Peak amplitude 0.3, with two silent gaps whose edges fall inside chunks (not on chunk boundaries).
    """
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 100.0 + 150.0 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wave_ = np.zeros(n)
    for harmonic in range(1, 40):
        freq = harmonic * f0
        envelope = 0.02 + sum(
            gain * np.exp(-0.5 * ((freq - centre) / width) ** 2)
            for centre, width, gain in [(500, 150, 1.0), (1500, 250, 0.5), (2500, 300, 0.25)]
        )
        wave_ += np.where(freq < CFG.fmax, envelope, 0.0) * np.sin(harmonic * phase)
    wave_ *= 0.3 / np.abs(wave_).max()
    for start, end in [(0.63, 0.91), (1.77, 2.19)]:
        wave_[int(start * SR) : int(end * SR)] = 0.0
    return wave_.astype(np.float32)


def noise(num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.3 * rng.standard_normal(num_samples), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def voiced_mel():
    return features.log_mel(voiced_signal(), CFG)


# ----------------------------------------------------------------------------------------------
# Features


def test_frame_sizes():
    assert features.hop_samples(CFG) == HOP
    assert features.win_samples(CFG) == WIN
    assert features.frames_per_chunk(CFG) == 8
    assert features.LogMelStream(CFG).chunk_samples == chunk_samples(CFG) == 3200
    assert features.frames_per_chunk(CFG) == CFG.audio_slots * CFG.stack


def test_mel_filterbank_shape_peaks_and_coverage():
    bank = features.mel_filterbank(CFG)
    assert bank.shape == (513, 80) and bank.dtype == np.float32
    assert bank.min() == 0.0 and bank.max() <= 1.0
    assert bank.max() > 0.999  # some filter peaks right on a bin
    # Peaks are 1 but sampled at bins 15.6 Hz apart; the narrowest (lowest) filters lose the most.
    assert bank.max(axis=0).min() > 0.7
    bin_hz = np.arange(513) * SR / CFG.n_fft
    np.testing.assert_allclose(bin_hz[bank.argmax(axis=0)], features.mel_center_frequencies(CFG), atol=SR / CFG.n_fft)
    inside = (bin_hz > CFG.fmin) & (bin_hz < CFG.fmax)
    assert (bank[inside].sum(axis=1) > 0).all()  # no gaps between fmin and fmax
    assert (bank[~inside] == 0).all()
    centres = features.mel_center_frequencies(CFG)
    assert centres[0] > CFG.fmin and centres[-1] < CFG.fmax and (np.diff(centres) > 0).all()
    assert features.mel_filterbank(CFG) is bank  # cached per config…
    with pytest.raises(ValueError, match="read-only"):
        bank[0, 0] = 1.0  # …so it must not be writable


def test_silence_is_exactly_dmel_min():
    logmel = features.log_mel(np.zeros(2 * 3200, np.float32), CFG)
    assert logmel.shape == (16, 80) and logmel.dtype == np.float32
    assert (logmel == CFG.dmel_min).all()
    levels = features.dmel(np.zeros(3200, np.float32), CFG)
    assert levels.shape == (4, 2, 80) and levels.dtype == np.uint8
    assert (levels == 0).all()


def test_sine_peaks_in_the_nearest_channel():
    t = np.arange(SR) / SR
    logmel = features.log_mel((0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), CFG)
    nearest = int(np.abs(features.mel_center_frequencies(CFG) - 1000.0).argmin())
    assert nearest == 26
    # Frame 0 half overlaps the silence before the start; every later frame sees the steady tone.
    assert (logmel[1:].argmax(axis=1) == nearest).all()
    # A full window of a sine of amplitude A has |X| ≈ A·Σw/2 = 0.5·400/2 = 100 at its bin.
    assert 1.9 < logmel[5, nearest] < 2.3


def test_dmel_round_trip_within_half_a_level(voiced_mel):
    step = (CFG.dmel_max - CFG.dmel_min) / (CFG.dmel_levels - 1)
    assert step == pytest.approx(0.6)
    back = dequantize_dmel(quantize_dmel(voiced_mel, CFG), CFG)
    inside = (voiced_mel >= CFG.dmel_min) & (voiced_mel <= CFG.dmel_max)
    assert inside.mean() > 0.99
    assert np.abs(back - voiced_mel)[inside].max() <= step / 2 + 1e-5
    levels = features.dmel(voiced_signal(), CFG)
    assert levels.shape == (60, 2, 80)
    np.testing.assert_array_equal(features.from_tokens(levels), quantize_dmel(voiced_mel, CFG))


def test_stream_matches_batch_bit_for_bit():
    wave_ = noise(6 * 3200)
    wave_[3200:4000] *= 3  # louder stretches so some values clip at dmel_max
    batch = features.log_mel(wave_, CFG)
    stream = features.LogMelStream(CFG)
    pushed = np.concatenate([stream.push(chunk) for chunk in wave_.reshape(6, 3200)])
    assert pushed.shape == batch.shape == (48, 80)
    np.testing.assert_array_equal(pushed, batch)
    stream.reset()
    np.testing.assert_array_equal(stream.push(wave_[:3200]), batch[:8])
    # `history` is how a caller resumes in the middle of a signal.
    np.testing.assert_array_equal(features.log_mel(wave_[3200:], CFG, history=wave_[2800:3200]), batch[8:])


def test_frames_are_causal():
    wave_ = noise(3 * 3200, seed=1)
    before = features.log_mel(wave_, CFG)
    for j in (0, 5, 12):
        changed = wave_.copy()
        changed[(j + 1) * HOP :] = noise(changed.size - (j + 1) * HOP, seed=2)
        after = features.log_mel(changed, CFG)
        np.testing.assert_array_equal(after[: j + 1], before[: j + 1])
        assert np.abs(after[j + 1] - before[j + 1]).max() > 0.01
    # A frame reaches back to sample (j+1)·hop − win, where the periodic Hann window is exactly 0, so the
    # earliest sample that can change frame j is the one after it.
    changed = wave_.copy()
    changed[5 * HOP - WIN] += 0.5
    np.testing.assert_array_equal(features.log_mel(changed, CFG)[4], before[4])
    changed[5 * HOP - WIN + 1] += 0.5
    assert np.abs(features.log_mel(changed, CFG)[4] - before[4]).max() > 0


def test_length_and_shape_errors():
    with pytest.raises(ValueError, match="401 samples, not a multiple of the 400-sample hop"):
        features.log_mel(np.zeros(401, np.float32), CFG)
    with pytest.raises(ValueError, match="1-D"):
        features.log_mel(np.zeros((400, 2), np.float32), CFG)
    with pytest.raises(ValueError, match="last 400 samples"):
        features.log_mel(np.zeros(400, np.float32), CFG, history=np.zeros(399))
    with pytest.raises(ValueError, match="3200 samples"):
        features.LogMelStream(CFG).push(np.zeros(3000, np.float32))
    with pytest.raises(ValueError, match="tokens of 2 frames"):
        features.to_tokens(np.zeros((7, 80)), CFG)


def test_tokens_round_trip():
    frames = np.arange(8 * 80, dtype=np.float32).reshape(8, 80)
    tokens = features.to_tokens(frames, CFG)
    assert tokens.shape == (4, 2, 80)
    np.testing.assert_array_equal(tokens[1, 0], frames[2])
    np.testing.assert_array_equal(features.from_tokens(tokens), frames)


# ----------------------------------------------------------------------------------------------
# Vocoder


def loud(logmel: np.ndarray) -> np.ndarray:
    """Where the quality bound applies: bins well above the silence floor."""
    return logmel > CFG.dmel_min + 2


def test_mel_to_magnitude(voiced_mel):
    plain = vocoder.mel_to_magnitude(voiced_mel, CFG, refine_iters=0)
    refined = vocoder.mel_to_magnitude(voiced_mel, CFG)
    assert plain.shape == refined.shape == (120, 513) and refined.dtype == np.float32
    assert plain.min() == 0.0 and refined.min() >= 0.0
    bank = features.mel_filterbank(CFG)
    mask = loud(voiced_mel)

    def mel_error(magnitude):
        return np.abs(np.log10(np.maximum(magnitude @ bank, 1e-7)) - voiced_mel)[mask].mean()

    # Measured: the clipped pseudo-inverse is off by 0.126 on average; the refinement brings it to 0.027.
    assert 0.1 < mel_error(plain) < 0.15
    assert mel_error(refined) < 0.04
    with pytest.raises(ValueError, match=r"\[F, 80\]"):
        vocoder.mel_to_magnitude(np.zeros((4, 40)), CFG)


def test_griffin_lim_reproduces_the_log_mel(voiced_mel):
    audio = vocoder.griffin_lim(voiced_mel, CFG, n_iter=32)
    assert audio.shape == (120 * HOP,) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0
    error = np.abs(features.log_mel(audio, CFG) - voiced_mel)
    # Measured 0.096 (32 iterations); classic Griffin-Lim from the plain pseudo-inverse gives 0.18.
    assert error[loud(voiced_mel)].mean() < 0.11
    np.testing.assert_array_equal(vocoder.griffin_lim(voiced_mel, CFG, n_iter=32), audio)  # deterministic
    seeded = vocoder.griffin_lim(voiced_mel, CFG, n_iter=32, seed=3)  # random initial phases: measured 0.105
    assert np.abs(features.log_mel(seeded, CFG) - voiced_mel)[loud(voiced_mel)].mean() < 0.12
    np.testing.assert_array_equal(vocoder.griffin_lim(voiced_mel, CFG, n_iter=32, seed=3), seeded)


def test_griffin_lim_of_silence_is_silent():
    # Values at the floor read as no energy at all, so silence is exact zeros, not faint noise.
    audio = vocoder.griffin_lim(np.full((16, 80), CFG.dmel_min, np.float32), CFG, n_iter=8)
    assert audio.shape == (16 * HOP,) and (audio == 0).all()
    streamer = vocoder.StreamingVocoder(CFG, n_iter=4)
    assert all((streamer.push(np.full((8, 80), CFG.dmel_min)) == 0).all() for _ in range(2))


def test_streaming_vocoder_reproduces_the_log_mel(voiced_mel):
    streamer = vocoder.StreamingVocoder(CFG, n_iter=32)
    assert streamer.delay_samples == WIN - HOP == 400
    chunks = [streamer.push(voiced_mel[i : i + 8]) for i in range(0, 120, 8)]
    assert all(c.shape == (3200,) and c.dtype == np.float32 for c in chunks)
    audio = np.concatenate(chunks)
    assert np.abs(audio).max() <= 1.0
    assert (audio[: streamer.delay_samples] == 0).all()  # the first push starts with the delay's silence
    # Sample t of the output is sample t − delay of the described audio; its last hop is still pending.
    error = np.abs(features.log_mel(audio[streamer.delay_samples :], CFG) - voiced_mel[:-1])
    # Measured 0.114 (32 iterations per chunk).
    assert error[loud(voiced_mel[:-1])].mean() < 0.13
    # No clicks where chunks join: the sample-to-sample step there is no larger than elsewhere.
    steps = np.abs(np.diff(audio))
    assert steps[np.arange(1, 15) * 3200 - 1].max() < np.percentile(steps, 99.5)
    streamer.reset()
    np.testing.assert_array_equal(streamer.push(voiced_mel[:8]), chunks[0])


def test_streaming_vocoder_rejects_wrong_chunks():
    with pytest.raises(ValueError, match=r"\[8, 80\]"):
        vocoder.StreamingVocoder(CFG).push(np.zeros((7, 80)))


# ----------------------------------------------------------------------------------------------
# WAV and PCM16


def test_pcm16_rounds_and_clips():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 1.4 / 32768, 1.6 / 32768, 0.5, 1.0, 3.0])
    np.testing.assert_array_equal(to_pcm16(x), [-32768, -32768, -16384, 0, 1, 2, 16384, 32767, 32767])
    assert to_pcm16(x).dtype == np.int16
    ints = np.array([-32768, 0, 32767], np.int16)
    np.testing.assert_array_equal(to_pcm16(ints), ints)
    back = from_pcm16(ints)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [-1.0, 0.0, 32767 / 32768])
    every_int16 = np.arange(-32768, 32768).astype(np.int16)
    np.testing.assert_array_equal(to_pcm16(from_pcm16(every_int16)), every_int16)
    with pytest.raises(ValueError, match="int32"):
        to_pcm16(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="int16"):
        from_pcm16(np.zeros(3, np.float32))


def test_wav_round_trip(tmp_path):
    mono = noise(1000, seed=3)
    path = tmp_path / "nested" / "folder" / "mono.wav"
    write_wav(path, mono, 16000)
    read, rate = read_wav(path)
    assert rate == 16000 and read.shape == (1000,) and read.dtype == np.float32
    assert np.abs(read - mono).max() <= 1 / 32768

    stereo = np.stack([noise(500, seed=4), np.linspace(-1.5, 1.5, 500)], axis=1)
    write_wav(tmp_path / "stereo.wav", stereo, 22050)
    read, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 22050 and read.shape == (500, 2)
    assert np.abs(read - np.clip(stereo, -1, 1)).max() <= 1 / 32768
    assert read.min() == -1.0 and read.max() == 32767 / 32768

    ints = np.array([-32768, -1, 0, 1, 32767], np.int16)
    write_wav(tmp_path / "ints.wav", ints, 8000)
    np.testing.assert_array_equal(to_pcm16(read_wav(tmp_path / "ints.wav")[0]), ints)


def _write_raw_wav(path, sample_width: int, data: bytes, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(sample_width)
        f.setframerate(8000)
        f.writeframes(data)


def test_read_wav_other_integer_widths(tmp_path):
    _write_raw_wav(tmp_path / "u8.wav", 1, bytes([0, 64, 128, 255]))
    np.testing.assert_array_equal(read_wav(tmp_path / "u8.wav")[0], [-1.0, -0.5, 0.0, 127 / 128])
    _write_raw_wav(tmp_path / "s24.wav", 3, bytes([0, 0, 0x80, 0, 0, 0x40, 0xFF, 0xFF, 0xFF]))
    np.testing.assert_array_equal(read_wav(tmp_path / "s24.wav")[0], [-1.0, 0.5, -(2.0**-23)])
    _write_raw_wav(tmp_path / "s32.wav", 4, np.array([-(2**31), 2**30, 0, 2**31 - 1], "<i4").tobytes(), channels=2)
    samples, rate = read_wav(tmp_path / "s32.wav")
    assert rate == 8000 and samples.shape == (2, 2)
    np.testing.assert_allclose(samples, [[-1.0, 0.5], [0.0, 1.0]], atol=1e-7)


def test_read_wav_rejects_unsupported_files(tmp_path):
    # A well-formed 32-bit float WAV (format tag 3): valid, but not integer PCM.
    data = np.zeros(4, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 8000 * 4, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "float.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    with pytest.raises(ValueError, match="integer PCM only"):
        read_wav(tmp_path / "float.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match=r"junk\.wav: not a WAV file"):
        read_wav(tmp_path / "junk.wav")
    with pytest.raises(ValueError, match=r"\[n\] or \[n, channels\]"):
        write_wav(tmp_path / "bad.wav", np.zeros((2, 2, 2)), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(tmp_path / "bad.wav", np.zeros(4), 0)
