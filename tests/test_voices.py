"""eSpeak NG voices: reproducible samples, word timings that match the text, validation, threads and forks."""

import ctypes
import hashlib
import itertools
import os
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from interaction_jax.audio import voices
from interaction_jax.audio.voices import Voice, languages, synthesize, synthesize_native, variants

SENTENCE = "The quick brown fox jumps over the lazy dog."
REPO_ROOT = Path(__file__).resolve().parents[1]


def digest(samples: np.ndarray) -> str:
    return hashlib.sha256(samples.tobytes()).hexdigest()


def written_words(text: str) -> list[str]:
    return [w.strip(".,!?;:") for w in text.split()]


# ----- voices -----


def test_languages_are_the_english_voices_of_the_shipped_data():
    names = languages()
    assert {"en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029"} <= set(names)
    assert all(re.fullmatch(r"en(-[a-z0-9]+)*", name) for name in names)
    assert names == tuple(sorted(set(names)))


def test_variants_are_the_filesystem_safe_files_of_voices_v():
    names = variants()
    assert {"f1", "f2", "f3", "f4", "f5", "m1", "m7", "klatt", "klatt4"} <= set(names)
    assert len(names) > 50
    assert all(re.fullmatch(r"[A-Za-z0-9]+", name) for name in names)
    assert "Mr serious" not in names  # a real variant, but a space has no place in a file name


@pytest.mark.parametrize(
    "voice",
    [Voice(), Voice("en-gb-x-rp", "f3", 200, 70, 20), Voice("en-029", "klatt4", 80, 0, 100), Voice("en-gb", "", 450)],
)
def test_name_round_trips_and_is_filesystem_safe(voice):
    assert Voice.from_name(voice.name) == voice
    assert re.fullmatch(r"[A-Za-z0-9+_-]+", voice.name)


def test_name_format():
    assert Voice("en-us", "f3").name == "en-us+f3_r160_p50_g50"
    assert Voice("en-gb", rate=200, pitch=40, pitch_range=10).name == "en-gb_r200_p40_g10"


@pytest.mark.parametrize("name", ["", "en-us", "en-us+f3_r160_p50", "en-us+f3_r160_p50_g50x", "../en-us_r160_p50_g50"])
def test_from_name_rejects_what_is_not_a_name(name):
    with pytest.raises(ValueError, match="not a voice name"):
        Voice.from_name(name)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rate": 79}, "rate"),
        ({"rate": 451}, "rate"),
        ({"rate": 160.0}, "rate"),
        ({"pitch": -1}, "pitch"),
        ({"pitch": 101}, "pitch"),
        ({"pitch": True}, "pitch"),
        ({"pitch_range": 200}, "pitch_range"),
        ({"language": "fr"}, "language"),
        ({"language": "EN-US"}, "language"),
        ({"variant": "nobody"}, "variant"),
        ({"variant": "Mr serious"}, "variant"),
    ],
)
def test_invalid_voice_fields_are_rejected_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=rf"Voice\.{field} must be"):
        Voice(**fields)


def test_unknown_language_error_lists_valid_ones():
    with pytest.raises(ValueError, match=r"en-029, en-gb"):
        Voice(language="klingon")
    with pytest.raises(ValueError, match=r"\[80, 450\]"):
        Voice(rate=10)


# ----- the C interface -----


def test_event_struct_has_the_64_bit_linux_layout():
    assert ctypes.sizeof(voices._Event) == 40
    offsets = {name: getattr(voices._Event, name).offset for name, _ in voices._Event._fields_}
    assert offsets == {
        "type": 0,
        "unique_identifier": 4,
        "text_position": 8,
        "length": 12,
        "audio_position": 16,
        "sample": 20,
        "user_data": 24,
        "id": 32,
    }


def test_carried_over_synthesis_state_is_found_in_the_symbol_table():
    synthesize_native("Hi.", Voice())
    with voices._lock:
        state = voices._library().synthesis_state
    symbols = voices._read_symbols(voices.espeakng_loader.get_library_path())
    flutter_phase = [s for s in symbols if s.name.startswith("Flutter_ix") and s.source_file == "wavegen.c"]
    assert len(flutter_phase) == 1 and flutter_phase[0].section == ".bss"
    assert len(state) > 50  # variables of the synthesis sources, and the echo globals
    assert sum(len(initial) for _, initial in state) > 11000  # the echo buffer alone is 11000 bytes


def test_native_rate_is_espeaks():
    _, rate, _ = synthesize_native("Hi.", Voice())
    assert rate == 22050


def test_empty_text_is_rejected():
    for text in ["", "   \n"]:
        with pytest.raises(ValueError, match="non-empty"):
            synthesize_native(text, Voice())


def test_espeak_error_code_becomes_runtime_error(monkeypatch):
    monkeypatch.setattr(voices, "_language_voice_files", lambda: {"en-us": "no/such-voice"})
    with pytest.raises(RuntimeError, match="espeak_SetVoiceByName failed with eSpeak error code 2"):
        synthesize_native("Hello.", Voice())


# ----- reproducibility -----


def test_same_text_and_voice_give_identical_samples_whatever_was_spoken_before():
    voice = Voice("en-us", "f3")
    first, _, first_words = synthesize_native(SENTENCE, voice)
    synthesize_native("Something else entirely, in another voice.", Voice("en-gb", "klatt", 300, 90, 90))
    second, _, second_words = synthesize_native(SENTENCE, voice)
    np.testing.assert_array_equal(first, second)
    assert first_words == second_words


def test_every_variant_is_reproducible():
    # Klatt variants add noise and every voice adds pitch flutter: both depend on state eSpeak carries
    # across calls (flutter phases, two random generators), which synthesis must reset. Speak each variant
    # twice, in opposite orders.
    text = "Shh, fish."
    forward = {v: digest(synthesize_native(text, Voice(variant=v))[0]) for v in variants()}
    backward = {v: digest(synthesize_native(text, Voice(variant=v))[0]) for v in reversed(variants())}
    assert forward == backward
    assert len(set(forward.values())) > len(variants()) // 2  # variants really sound different


FRESH_PROCESS_VOICES = ("en-us+klatt_r160_p50_g50", "en-gb-x-rp+f3_r200_p60_g40")


def test_identical_samples_in_a_fresh_process():
    script = (
        "import hashlib; from interaction_jax.audio.voices import Voice, synthesize_native\n"
        f"for name in {FRESH_PROCESS_VOICES!r}:\n"
        f"    print(hashlib.sha256(synthesize_native({SENTENCE!r}, Voice.from_name(name))[0].tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=True
    )
    synthesize_native("Warm up with something else first.", Voice("en-029", "m3"))
    here = [digest(synthesize_native(SENTENCE, Voice.from_name(name))[0]) for name in FRESH_PROCESS_VOICES]
    assert result.stdout.split() == here


def test_concurrent_threads_match_serial_calls():
    jobs = [(f"Thread test number {i}, spoken clearly.", Voice(variant=v)) for i, v in enumerate(["f1", "m2", "klatt"])]
    jobs = jobs * 4
    serial = [digest(synthesize_native(text, voice)[0]) for text, voice in jobs]
    concurrent: list[str | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(worker, len(jobs), 4):
                text, voice = jobs[index]
                concurrent[index] = digest(synthesize_native(text, voice)[0])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert concurrent == serial


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # JAX warns that forking a multithreaded process is unsafe
def test_forked_child_reinitialises_even_if_the_lock_was_held():
    expected = digest(synthesize_native(SENTENCE, Voice(variant="m2"))[0])
    read_end, write_end = os.pipe()
    with voices._lock:  # another thread mid-synthesis at the moment of the fork
        pid = os.fork()
    if pid == 0:  # the child: speak, report, leave without running the parent's cleanup
        code = 1
        try:
            os.write(write_end, digest(synthesize_native(SENTENCE, Voice(variant="m2"))[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        ready, _, _ = select.select([pipe], [], [], 30)
        if not ready:  # deadlocked on the inherited lock, or hung in the library
            os.kill(pid, signal.SIGKILL)
        child_digest = pipe.read() if ready else "(no answer in 30 s)"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_digest == expected


# ----- the voice changes the speech -----


def test_voice_parameters_change_the_audio():
    base = synthesize_native(SENTENCE, Voice())[0]
    for other in [Voice(pitch=80), Voice(pitch_range=0), Voice(variant="f2"), Voice(language="en-gb-scotland")]:
        audio = synthesize_native(SENTENCE, other)[0]
        assert audio.shape != base.shape or not np.array_equal(audio, base), other


def test_faster_rate_is_shorter():
    slow = synthesize_native(SENTENCE, Voice(rate=120))[0]
    fast = synthesize_native(SENTENCE, Voice(rate=250))[0]
    assert fast.size < 0.7 * slow.size


# ----- word timings -----


@pytest.mark.parametrize("voice", [Voice(), Voice("en-gb", "f4", 250, 80, 80), Voice("en-us-nyc", "klatt2", 100)])
def test_words_match_the_text_and_are_timed_inside_the_audio(voice):
    samples, rate, words = synthesize_native(SENTENCE, voice)
    duration = samples.size / rate
    assert [w.text for w in words] == written_words(SENTENCE)
    assert all(0 <= w.start_s < w.end_s <= duration for w in words)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(words))
    assert words[0].start_s < 0.03  # the clip starts with the first word
    assert words[-1].end_s > duration - 0.03  # ... and ends with the last


def test_punctuation_is_stripped_and_contractions_and_numbers_stay_whole():
    text = "Hello, world! Don't stop—it's 42 well-known \"cafés\" (really)."
    _, _, words = synthesize_native(text, Voice())
    assert [w.text for w in words] == ["Hello", "world", "Don't", "stop", "it's", "42", "well-known", "cafés", "really"]


def test_non_ascii_text_positions_count_characters():
    text = "Naïve café owners über alles."
    _, _, words = synthesize_native(text, Voice())
    assert [w.text for w in words] == written_words(text)


def test_pause_after_a_comma_is_not_part_of_the_word():
    _, _, words = synthesize_native("Well, maybe.", Voice())
    assert [w.text for w in words] == ["Well", "maybe"]
    assert words[1].start_s - words[0].end_s > 0.1


def test_silence_at_the_edges_is_trimmed_to_20_ms():
    samples, rate, _ = synthesize_native("... Hello there. ...", Voice(rate=80))
    audible = np.flatnonzero(np.abs(samples.astype(np.int32)) > voices.SILENCE_THRESHOLD * 32768)
    assert audible[0] <= 0.020 * rate + 1
    assert samples.size - 1 - audible[-1] <= 0.020 * rate + 1


# ----- the 16 kHz clip -----


def test_clip_is_the_native_audio_resampled():
    voice = Voice(variant="m3")
    native, native_rate, native_words = synthesize_native(SENTENCE, voice)
    clip = synthesize(SENTENCE, voice)
    assert clip.sample_rate == 16000 and clip.audio.dtype == np.float32
    assert clip.audio.size == round(native.size * 16000 / native_rate)
    assert clip.duration_s == pytest.approx(native.size / native_rate, abs=1e-4)
    assert clip.voice == voice.name and clip.text == SENTENCE
    assert [w.text for w in clip.words] == [w.text for w in native_words]
    for word, native_word in zip(clip.words, native_words, strict=True):
        assert word.start_s == pytest.approx(native_word.start_s, abs=1e-4)
        assert word.end_s == pytest.approx(native_word.end_s, abs=1e-4)
        assert 0 <= word.start_s < word.end_s <= clip.duration_s


def test_clip_peak_is_loud_but_not_clipped():
    for voice in [Voice(), Voice(variant="f5"), Voice(variant="klatt3", pitch=90)]:
        peak = float(np.abs(synthesize(SENTENCE, voice).audio).max())
        assert 0.05 < peak <= 1.0


def test_clip_at_another_rate():
    clip = synthesize("Hello there.", Voice(), sample_rate=24000)
    native, rate, _ = synthesize_native("Hello there.", Voice())
    assert clip.sample_rate == 24000
    assert clip.audio.size == round(native.size * 24000 / rate)
