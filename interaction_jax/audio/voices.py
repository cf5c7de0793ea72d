"""Speech synthesis with eSpeak NG: the user and model voices of the synthetic training data.

`synthesize(text, voice)` returns a `Clip`: float32 mono audio at the stream's sample rate (16 kHz by
default) and a `Word` for each written word eSpeak times, with its start and end in seconds (eSpeak sends
no WORD event for some unstressed words such as "the" or "not": those have no `Word`, and the scenarios
keep their text with the timed word before them). `synthesize_native` gives
the same speech as int16 samples at eSpeak's own rate (22.05 kHz). A `Voice` names an eSpeak NG English
voice (accent), an optional voice variant (speaker character: f1..f5, m1..m8, klatt, ...), and rate,
pitch and pitch range; `Voice.name` is a stable id that `Voice.from_name` parses back.

Design notes, and why:

* One library per process, behind a lock. libespeak-ng is a C library with global state (the current
  voice, parameters, output buffers), so every call into it happens under one module-level lock, and
  each synthesis sets its voice and parameters afresh rather than trusting what a previous call left.
* Synchronous mode. eSpeak runs with AUDIO_OUTPUT_SYNCHRONOUS: `espeak_Synth` synthesises in the calling
  thread and hands audio and events to our callback before returning. (AUDIO_OUTPUT_RETRIEVAL would
  start a worker thread inside the library; threads do not survive `fork`, and the hand-off costs time.)
* Re-initialised after fork. Data-loader worker processes (grain) are forked from a parent that may
  already hold an initialised library, possibly mid-call on another thread. A child gets a fresh lock
  (`os.register_at_fork`) and re-initialises the library on first use (tracked by `os.getpid()`).
* Deterministic. eSpeak carries synthesis state from one call into the next and never resets it: the
  phases of its pitch-flutter oscillators, filter memories, the previous voice's amplitude and flutter
  settings, the last clause's intonation, and the random generators behind Klatt noise (its own, and the
  C library's rand() for the "klatt 6" voices). So the same text would come out slightly different
  depending on what was spoken before. Right after initialising we copy the static variables of the
  synthesis source files (found in the shared object's symbol table), and before every call we copy them
  back and reseed both generators: each call then runs exactly as the first call of a fresh process, and
  the same text and `Voice` give the same samples in any call, in any process. (The copied variables hold
  numbers, and pointers that are null or into the library itself, never into the heap.) rand() is
  process-wide: other C code in the process that uses it sees it reseeded (Python's `random` and NumPy
  have their own generators and are unaffected).
* Trimmed. The audio is what eSpeak produces, except that silence before the first and after the last
  audible sample is cut to at most `EDGE_SILENCE_S` (20 ms), and word times are shifted to match: a clip
  starts right when its speech starts, so scenarios can place clips precisely in time.
* Word timings. Each eSpeak WORD event marks where a word's speech starts (`audio_position`, in ms) and
  where the word is in the text (`text_position`, 1-based, counted in characters, not UTF-8 bytes). A
  word ends at its last audible sample before the next word starts, so pauses after commas and full
  stops are not counted as part of the word.
* Word texts are the words as written, without surrounding punctuation: "Hello," → "Hello", while
  "don't", "well-known" and "42" stay whole (when eSpeak speaks one written word as several, e.g. "42" as
  "forty two", it is still one `Word`). Dashes (— –) and slashes separate words.
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import functools
import os
import re
import struct
import threading
import unicodedata
import warnings
from pathlib import Path

import espeakng_loader
import numpy as np

from interaction_jax.audio.clip import Clip, Word
from interaction_jax.audio.resample import resample

# Speech parameter ranges accepted by eSpeak NG's espeak_SetParameter.
RATE_RANGE = (80, 450)  # words per minute
PITCH_RANGE = (0, 100)  # base pitch; 50 is the voice's own
PITCH_RANGE_RANGE = (0, 100)  # pitch variation; 0 is monotone

# Samples quieter than this (fraction of full scale, ≈ −46 dBFS) count as silence when trimming clips and
# ending words. eSpeak's pauses are exact zeros, so the value only decides how much of a fading tail counts.
SILENCE_THRESHOLD = 0.005
EDGE_SILENCE_S = 0.020  # silence kept before the first and after the last audible sample

_NAME_PATTERN = re.compile(
    r"^(?P<language>[a-z0-9-]+)(?:\+(?P<variant>[A-Za-z0-9]+))?_r(?P<rate>\d+)_p(?P<pitch>\d+)_g(?P<pitch_range>\d+)$"
)
_VARIANT_PATTERN = re.compile(r"^[A-Za-z0-9]+$")  # variant names that are safe inside file names
_ENGLISH_PATTERN = re.compile(r"^en(-|$)")
# Written words: runs of non-space characters, also split at dashes and slashes.
_WORD_PATTERN = re.compile(r"[^\s\u2013\u2014/]+")


# ----------------------------------------------------------------------------------------------------
# Voices
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice: accent, variant (speaker character) and speech parameters. Validated on creation."""

    language: str = "en-us"  # an English eSpeak NG language, one of languages()
    variant: str = ""  # a voice variant, one of variants(); "" for the language's own voice
    rate: int = 160  # words per minute, RATE_RANGE
    pitch: int = 50  # PITCH_RANGE
    pitch_range: int = 50  # PITCH_RANGE_RANGE

    def __post_init__(self):
        _check_choice("language", self.language, languages())
        if self.variant != "":
            _check_choice("variant", self.variant, variants())
        _check_int("rate", self.rate, RATE_RANGE)
        _check_int("pitch", self.pitch, PITCH_RANGE)
        _check_int("pitch_range", self.pitch_range, PITCH_RANGE_RANGE)

    @property
    def name(self) -> str:
        """A stable, unique, filesystem-safe id, e.g. "en-us+f3_r160_p50_g50" (no "+…" without a variant)."""
        speaker = f"{self.language}+{self.variant}" if self.variant else self.language
        return f"{speaker}_r{self.rate}_p{self.pitch}_g{self.pitch_range}"

    @classmethod
    def from_name(cls, name: str) -> Voice:
        """The Voice whose `.name` is `name`."""
        match = _NAME_PATTERN.match(name)
        if match is None:
            raise ValueError(f"not a voice name: {name!r} (expected e.g. 'en-us+f3_r160_p50_g50')")
        return cls(
            language=match["language"],
            variant=match["variant"] or "",
            rate=int(match["rate"]),
            pitch=int(match["pitch"]),
            pitch_range=int(match["pitch_range"]),
        )


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        examples = ", ".join(allowed[:8]) + (", ..." if len(allowed) > 8 else "")
        raise ValueError(f"Voice.{field} must be one of the {len(allowed)} available ({examples}); got {value!r}")


def _check_int(field: str, value: object, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"Voice.{field} must be an integer in [{low}, {high}]; got {value!r}")


@functools.cache
def _data_path() -> Path:
    return Path(espeakng_loader.get_data_path())


@functools.cache
def _language_voice_files() -> dict[str, str]:
    """English language code → eSpeak voice identifier (its path under espeak-ng-data/lang, e.g. "gmw/en-US").

    The code is the voice file's first `language` line, the name eSpeak documents the voice by ("en-gb" for
    the file "en"). en-shaw is left out: it reads the Shavian alphabet, and on Latin text is plain en-gb.
    """
    lang_dir = _data_path() / "lang"
    voices = {}
    for path in sorted(lang_dir.rglob("*")):
        if not path.is_file():
            continue
        code = _first_language_code(path)
        if code is not None and _ENGLISH_PATTERN.match(code) and code != "en-shaw":
            voices[code] = path.relative_to(lang_dir).as_posix()
    return voices


def _first_language_code(voice_file: Path) -> str | None:
    for line in voice_file.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "language":
            return fields[1].lower()
    return None


@functools.cache
def languages() -> tuple[str, ...]:
    """The English eSpeak NG languages (accents) in the shipped data: the values `Voice.language` may take."""
    return tuple(sorted(_language_voice_files()))


@functools.cache
def variants() -> tuple[str, ...]:
    """The voice variants in espeak-ng-data/voices/!v whose names are filesystem-safe: `Voice.variant` values."""
    variant_dir = _data_path() / "voices" / "!v"
    return tuple(sorted(p.name for p in variant_dir.iterdir() if p.is_file() and _VARIANT_PATTERN.match(p.name)))


# ----------------------------------------------------------------------------------------------------
# The C library (speak_lib.h)
# ----------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_FULL_VOLUME = 100
_RAND_SEED = 1  # any fixed value: it only has to be the same every call

# Where eSpeak keeps state from one synthesis into the next that it never resets: static variables of the
# waveform generators (pitch-flutter phases, glottal-cycle counters, filter memories, the previous voice's
# amplitude and flutter settings), of the synthesis queue and of intonation (the last clause's tone
# positions). Restored before every call to their values right after espeak_Initialize.
_SYNTHESIS_SOURCES = ("wavegen.c", "klatt.c", "synthesize.c", "intonation.c", "setlengths.c")
# ... except the time-stretcher, a heap object eSpeak only uses above 450 words per minute: not ours to free.
_SYNTHESIS_STATE_KEPT = frozenset({"sonicSpeedupStream", "sonicSpeed"})
# ... and these globals (their symbols name no source file): the echo line shared by both generators, and
# the intonation options that only some voice files set.
_SYNTHESIS_GLOBALS = ("echo_buf", "echo_head", "echo_tail", "echo_amp", "option_tone_flags")


# The C library whose rand() eSpeak's "klatt 6" voices (and speechPlayer) draw noise from.
_C_LIBRARY = ctypes.CDLL(None)
_C_LIBRARY.srand.argtypes = (ctypes.c_uint,)
_C_LIBRARY.srand.restype = None


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    """espeak_EVENT: 40 bytes on 64-bit Linux (six 4-byte ints, then a pointer and an 8-byte union)."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Capture:
    """What the synth callback collects during one espeak_Synth call."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.word_events: list[tuple[int, int]] = []  # (text_position, audio_position ms)
        self.error: BaseException | None = None


_capture: _Capture | None = None  # the synthesis in progress; only touched under _lock


def _on_synth(wav, num_samples, events) -> int:
    """The synth callback: copy out the audio chunk and WORD events. Returns 1 to abort after an error."""
    capture = _capture
    if capture is None:
        return 1
    try:
        if num_samples > 0 and wav:
            capture.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events and events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_WORD:
                capture.word_events.append((event.text_position, event.audio_position))
            index += 1
    except BaseException as error:  # an exception must not unwind through C; re-raised after espeak_Synth
        capture.error = error
        return 1
    return 0


# Module-level so the C library's pointer to it stays valid for the life of the process.
_SYNTH_CALLBACK = _SynthCallback(_on_synth)


class _ESpeak:
    """This process's initialised libespeak-ng. Only use it under `_lock`."""

    def __init__(self):
        path = espeakng_loader.get_library_path()
        self.lib = ctypes.CDLL(path)
        self._declare_prototypes()
        self.sample_rate = self._initialize()
        # Taken now, before any synthesis: every call then starts from the state of a fresh process.
        self.synthesis_state = _read_memory(_synthesis_state_regions(path, self.lib))

    def _declare_prototypes(self) -> None:
        lib = self.lib
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size in bytes
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique identifier out
            ctypes.c_void_p,  # user data
        )
        lib.espeak_Synth.restype = ctypes.c_int
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed.argtypes = (ctypes.c_long,)
            lib.espeak_ng_SetRandSeed.restype = None

    def _initialize(self) -> int:
        data_path = str(_data_path()).encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with code {rate}")
        self.lib.espeak_SetSynthCallback(_SYNTH_CALLBACK)
        return rate

    def reinitialize(self) -> None:
        """Initialise again (after a fork), without espeak_Terminate: the inherited state may be mid-call."""
        self.sample_rate = self._initialize()

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """int16 samples and WORD events (text_position, audio_position ms) of `text` spoken by `voice`."""
        global _capture
        # Reset first, so that loading the voice and synthesising run exactly as in a fresh process.
        self._reset_carried_over_state()
        self._set_voice(voice)
        data = text.encode("utf-8") + b"\0"
        capture = _Capture()
        _capture = capture
        try:
            code = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            _capture = None
        if capture.error is not None:
            raise capture.error
        _check_code("espeak_Synth", code)
        samples = np.concatenate(capture.chunks) if capture.chunks else np.zeros(0, np.int16)
        return samples, capture.word_events

    def _set_voice(self, voice: Voice) -> None:
        identifier = _language_voice_files()[voice.language]
        if voice.variant:
            identifier += "+" + voice.variant
        _check_code("espeak_SetVoiceByName", self.lib.espeak_SetVoiceByName(identifier.encode()))
        # Punctuation and capitals stay at eSpeak's defaults (neither is spoken): no call changes them, and
        # this build answers espeak_SetParameter for them with an error in synchronous mode.
        for parameter, value in (
            (_RATE, voice.rate),
            (_VOLUME, _FULL_VOLUME),
            (_PITCH, voice.pitch),
            (_RANGE, voice.pitch_range),
            (_WORDGAP, 0),  # no extra pause between words
        ):
            _check_code("espeak_SetParameter", self.lib.espeak_SetParameter(parameter, value, 0))

    def _reset_carried_over_state(self) -> None:
        for address, initial in self.synthesis_state:
            ctypes.memmove(address, initial, len(initial))
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):
            self.lib.espeak_ng_SetRandSeed(_RAND_SEED)
        _C_LIBRARY.srand(_RAND_SEED)


def _check_code(function: str, code: int) -> None:
    if code != 0:
        raise RuntimeError(f"{function} failed with eSpeak error code {code}")


_lock = threading.Lock()
_espeak: _ESpeak | None = None
_espeak_pid: int | None = None


def _replace_lock_in_child() -> None:
    # A forked child must not inherit a lock that a thread of the parent held at the moment of the fork.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_replace_lock_in_child)


def _library() -> _ESpeak:
    """The library, initialised for this process. Call under `_lock`."""
    global _espeak, _espeak_pid
    if _espeak is None:
        _espeak = _ESpeak()
    elif _espeak_pid != os.getpid():
        _espeak.reinitialize()
    _espeak_pid = os.getpid()
    return _espeak


# ----------------------------------------------------------------------------------------------------
# Finding the carried-over synthesis state: the shared object's symbol table
# ----------------------------------------------------------------------------------------------------

_SHT_SYMTAB = 2
_STT_OBJECT, _STT_FUNC, _STT_FILE = 1, 2, 4
_STB_LOCAL = 0
_WRITABLE_DATA_SECTIONS = (".data", ".bss")


@dataclasses.dataclass(frozen=True)
class _Symbol:
    name: str
    source_file: str | None  # for static (local) symbols: the source file they belong to
    is_variable: bool
    offset: int  # from the library's load address
    size: int
    section: str


def _synthesis_state_regions(path: str, lib: ctypes.CDLL) -> list[tuple[int, int]]:
    """(address, size) of each variable that holds carried-over synthesis state in the loaded library.

    Static variables are found in the ELF symbol table, where each file's static symbols follow a symbol
    naming the source file. Without a symbol table (a stripped build) this returns nothing and warns: the
    synthesis then still works, but is no longer bit-reproducible.
    """
    try:
        symbols = _read_symbols(path)
        synth = [s for s in symbols if s.name == "espeak_Synth" and not s.is_variable]
        if len(synth) != 1:
            raise LookupError("no symbol table")
        load_address = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value - synth[0].offset
        state = [
            s
            for s in symbols
            if s.is_variable
            and s.size > 0
            and s.section in _WRITABLE_DATA_SECTIONS
            and (s.source_file in _SYNTHESIS_SOURCES or s.name in _SYNTHESIS_GLOBALS)
            and s.name.split(".")[0] not in _SYNTHESIS_STATE_KEPT
        ]
        missing = set(_SYNTHESIS_GLOBALS) - {s.name for s in state}
        if missing or not any(s.source_file in _SYNTHESIS_SOURCES for s in state):
            raise LookupError(f"synthesis state not found (missing {sorted(missing)})")
        return [(load_address + s.offset, s.size) for s in state]
    except (OSError, LookupError, ValueError, struct.error) as error:
        warnings.warn(f"eSpeak NG synthesis will not be reproducible: {error}", RuntimeWarning, stacklevel=2)
        return []


def _read_memory(regions: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    return [(address, ctypes.string_at(address, size)) for address, size in regions]


def _read_symbols(path: str) -> list[_Symbol]:
    """The variables and functions in the symbol table of a 64-bit little-endian ELF shared object."""
    with open(path, "rb") as file:
        image = file.read()
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    section_table = struct.unpack_from("<Q", image, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", image, 0x3A)
    # Section header fields: name, type, flags, address, offset, size, link, info, alignment, entry size.
    headers = [struct.unpack_from("<IIQQQQIIQQ", image, section_table + i * entry_size) for i in range(count)]
    section_names = [_c_string(image, headers[names_index][4] + h[0]) for h in headers]
    symbols = []
    for _, sh_type, _, _, offset, size, link, _, _, symbol_size in headers:
        if sh_type != _SHT_SYMTAB:
            continue
        strings = headers[link][4]
        source_file = None
        for start in range(offset, offset + size, symbol_size):
            name_at, info, _, section_index, value, value_size = struct.unpack_from("<IBBHQQ", image, start)
            symbol_type, binding = info & 0xF, info >> 4
            name = _c_string(image, strings + name_at)
            if symbol_type == _STT_FILE:
                source_file = name
            elif symbol_type in (_STT_OBJECT, _STT_FUNC) and 0 < section_index < len(headers):
                symbols.append(
                    _Symbol(
                        name=name,
                        source_file=source_file if binding == _STB_LOCAL else None,
                        is_variable=symbol_type == _STT_OBJECT,
                        offset=value,
                        size=value_size,
                        section=section_names[section_index],
                    )
                )
    return symbols


def _c_string(image: bytes, start: int) -> str:
    return image[start : image.index(b"\0", start)].decode("ascii", "replace")


# ----------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------


def synthesize_native(text: str, voice: Voice) -> tuple[np.ndarray, int, list[Word]]:
    """`text` spoken by `voice`: int16 samples at eSpeak's rate (22050 Hz), that rate, and word timings.

    Leading and trailing silence is trimmed to `EDGE_SILENCE_S`; word times are in seconds from the start
    of the returned samples. Raises ValueError for empty text or text with nothing to say, RuntimeError when
    eSpeak reports an error.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text to synthesise must be a non-empty string; got {text!r}")
    if not isinstance(voice, Voice):
        raise TypeError(f"voice must be a Voice; got {type(voice).__name__}")
    with _lock:
        espeak = _library()
        samples, word_events = espeak.synthesize(text, voice)
        sample_rate = espeak.sample_rate
    audible = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE_THRESHOLD * 32768)
    if audible.size == 0 or not word_events:
        raise ValueError(f"eSpeak produced no speech for {text!r}")
    start, stop = _trim_bounds(audible, samples.size, sample_rate)
    words = _words(text, word_events, audible, samples.size, sample_rate)
    words = _shift_words(words, -start / sample_rate, (stop - start) / sample_rate)
    return samples[start:stop].copy(), sample_rate, words


def synthesize(text: str, voice: Voice, sample_rate: int = 16000) -> Clip:
    """`text` spoken by `voice` as a `Clip`: float32 samples in [-1, 1] at `sample_rate`, and word timings.

    The audio is `synthesize_native`'s, resampled; word times (seconds) carry over, clamped to the clip.
    """
    samples, native_rate, words = synthesize_native(text, voice)
    audio = resample(samples.astype(np.float32) / 32768.0, native_rate, sample_rate)
    audio = np.clip(audio, -1.0, 1.0)  # resampling can overshoot full scale by a hair
    duration = audio.size / sample_rate
    words = [Word(w.text, min(w.start_s, duration), min(w.end_s, duration)) for w in words]
    return Clip(text=text, voice=voice.name, audio=audio, sample_rate=sample_rate, words=tuple(words))


def _trim_bounds(audible: np.ndarray, num_samples: int, sample_rate: int) -> tuple[int, int]:
    """[start, stop) of the samples to keep: the audible span plus at most EDGE_SILENCE_S either side."""
    margin = round(EDGE_SILENCE_S * sample_rate)
    return max(0, int(audible[0]) - margin), min(num_samples, int(audible[-1]) + 1 + margin)


def _words(
    text: str, word_events: list[tuple[int, int]], audible: np.ndarray, num_samples: int, sample_rate: int
) -> list[Word]:
    """One Word per written word that eSpeak spoke, timed in samples of the untrimmed audio (as seconds)."""
    written = [(m.start(), m.end(), m.group()) for m in _WORD_PATTERN.finditer(text)]
    starts: list[tuple[int, str]] = []  # (start sample, word text)
    last_index = -1
    for text_position, audio_ms in word_events:
        index = _written_word_at(written, text_position - 1)
        if index is None or index <= last_index:
            continue  # a second event inside one written word ("42" → "forty", "two"), or past the end
        last_index = index
        start = min(round(audio_ms * sample_rate / 1000), num_samples)
        starts.append((max(start, starts[-1][0] if starts else 0), _strip_punctuation(written[index][2])))
    words = []
    for k, (start, word_text) in enumerate(starts):
        next_start = starts[k + 1][0] if k + 1 < len(starts) else num_samples
        end = _last_audible_before(audible, start, next_start)
        words.append(Word(word_text, start / sample_rate, end / sample_rate))
    return words


def _written_word_at(written: list[tuple[int, int, str]], char_index: int) -> int | None:
    """The written word containing `char_index`, or else the first one after it (None if there is none)."""
    index = bisect.bisect_right([end for _, end, _ in written], char_index)
    return index if index < len(written) else None


def _strip_punctuation(word: str) -> str:
    """`word` without leading/trailing punctuation ("Hello," → "Hello"); unchanged if it is all punctuation."""
    is_punctuation = [unicodedata.category(c).startswith("P") for c in word]
    first = next((i for i, p in enumerate(is_punctuation) if not p), None)
    if first is None:
        return word
    last = len(word) - next(i for i, p in enumerate(reversed(is_punctuation)) if not p)
    return word[first:last]


def _last_audible_before(audible: np.ndarray, start: int, stop: int) -> int:
    """One past the last audible sample in [start, stop), or `start` when that span is silent."""
    index = int(np.searchsorted(audible, stop)) - 1
    if index < 0 or audible[index] < start:
        return start
    return int(audible[index]) + 1


def _shift_words(words: list[Word], offset_s: float, duration_s: float) -> list[Word]:
    """Words moved by `offset_s` and clamped to [0, duration_s]."""

    def clamp(t: float) -> float:
        return min(max(t + offset_s, 0.0), duration_s)

    return [Word(w.text, clamp(w.start_s), clamp(w.end_s)) for w in words]
