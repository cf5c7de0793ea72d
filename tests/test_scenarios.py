"""The corpus, the scenario registry and the scenarios: shared rules, per-scenario timing, determinism, splits."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import math
import pkgutil
import re

import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import tokenizer
from interaction_jax.audio.clip import Word
from interaction_jax.config import ConfigError, StreamConfig
from interaction_jax.data import corpus, scenarios
from interaction_jax.data.bank import LiveClips
from interaction_jax.data.episode import ScenarioContext, check_episode
from interaction_jax.data.render import place_text
from interaction_jax.data.scenarios import EpisodeTooShort, common, make_episode
from interaction_jax.stream import chunk_samples
from interaction_jax.video import scene as video_scene

CFG = StreamConfig()
SR = CFG.sample_rate
S = chunk_samples(CFG)
C = CFG.chunk_ms / 1000
SEEDS = range(14)
SCENARIO_NAMES = scenarios.names()
CLIPS = LiveClips()  # one synthesiser cache for the whole module


class RecordingClips:
    """A clip source that remembers every (text, voice) asked of it."""

    def __init__(self, inner):
        self.inner = inner
        self.requests: set[tuple[str, object]] = set()

    def get(self, text, voice):
        self.requests.add((text, voice))
        return self.inner.get(text, voice)


@functools.cache
def generate(name: str, seed: int, split: str = "train", video: bool = True, num_chunks: int = 50):
    """(episode, the (text, voice) pairs it asked for), memoised across tests."""
    clips = RecordingClips(CLIPS)
    ctx = ScenarioContext(dataclasses.replace(CFG, video=video), clips, split, num_chunks)
    return make_episode(name, seed, ctx), frozenset(clips.requests)


def episodes(name: str, split: str = "train", video: bool = True, seeds=SEEDS):
    return [generate(name, seed, split, video)[0] for seed in seeds]


def decoded(events) -> str:
    return tokenizer.decode(t for e in sorted(events, key=lambda e: e.time_s) for t in e.tokens)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def last_chunk_of(end_s: float) -> int:
    return (round(end_s * SR) - 1) // S


# ----------------------------------------------------------------------------------------------
# The corpus


def test_corpus_splits_are_disjoint_and_sized():
    train_voices, heldout_voices = corpus.user_voices("train"), corpus.user_voices("heldout")
    assert 6 <= len(train_voices) <= 10 and 2 <= len(heldout_voices) <= 4
    pairs = lambda voices: {(v.language, v.variant) for v in voices}
    assert not pairs(train_voices) & pairs(heldout_voices)
    assert corpus.MODEL_VOICE not in train_voices + heldout_voices
    for v in train_voices + heldout_voices:
        assert 140 <= v.rate <= 200 and 30 <= v.pitch <= 75
    total = 0
    for category in corpus.CATEGORIES:
        train, heldout = corpus.user_lines(category, "train"), corpus.user_lines(category, "heldout")
        assert train and heldout and not set(train) & set(heldout), category
        assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout), category
        total += len(train) + len(heldout)
    assert total <= 200
    with pytest.raises(ValueError, match="unknown user line category"):
        corpus.user_lines("poetry", "train")


def test_voices_exist_in_the_shipped_espeak_data():
    from interaction_jax.audio import voices

    for v in (*corpus.user_voices("train"), *corpus.user_voices("heldout"), corpus.MODEL_VOICE):
        assert v.language in voices.languages(), v
        assert v.variant == "" or v.variant in voices.variants(), v


def test_model_lines_cover_every_answer_and_bank_entries_compose():
    lines = corpus.model_lines()
    assert len(set(lines)) == len(lines)
    for split in ("train", "heldout"):
        for a, b in corpus.addition_operands(split):
            assert corpus.addition_question(a, b) in corpus.user_lines("delegate_question", split)
            assert corpus.delegate_answer_line(str(a + b)) in lines
        entries = corpus.bank_entries(split)
        assert len(set(entries)) == len(entries)
        user = sum(len(corpus.user_lines(c, split)) for c in corpus.CATEGORIES)
        assert len(entries) == user * len(corpus.user_voices(split)) + len(lines)
    for clock in corpus.CLOCK_TIMES:
        assert corpus.delegate_answer_line(clock) in lines
    for group in (corpus.BACKCHANNELS, corpus.NUMBER_WORDS, corpus.TIMER_RESPONSES, corpus.LONG_REPLIES):
        assert set(group) <= set(lines)
    for text in corpus.user_lines("time_request", "heldout"):
        assert corpus.time_request_seconds(text) in corpus.TIME_REQUEST_SECONDS


# ----------------------------------------------------------------------------------------------
# Shared helpers


def test_text_arrival_chunk_matches_rendering():
    for time_s, n in [(0.0, 1), (0.05, 4), (0.19, 5), (1.3, 34), (2.0, 9)]:
        placed, _ = place_text([tokenizer_event(time_s, n)], 40, CFG.text_in_slots, CFG)
        landed = max(k for k in range(40) if (placed[k] != tokenizer.PAD).any())
        assert common.text_arrival_chunk(time_s, n, CFG.text_in_slots, CFG) == landed


def tokenizer_event(time_s: float, n: int):
    from interaction_jax.data.episode import TextEvent

    return TextEvent(time_s, tuple([65] * n))


def test_lay_out_keeps_every_sample_and_cuts_between_words():
    clip = CLIPS.get(corpus.user_lines("statement", "train")[0], corpus.user_voices("train")[0])
    rng = np.random.default_rng(0)
    seen_pauses = 0
    for _ in range(20):
        layout = common.lay_out(clip, rng, 2, (0.4, 2.0))
        joined = np.concatenate([clip.audio[a:b] for _, a, b in layout.pieces])
        np.testing.assert_array_equal(joined, clip.audio)
        for start, end in layout.pauses():
            assert 0.4 * SR - 1 <= end - start <= 2.0 * SR + 1
        word_spans = [(w.start_s * SR, w.end_s * SR) for w in clip.words]
        for _, a, _ in layout.pieces[1:]:  # every cut is outside every word
            assert not any(s + 1 < a < e - 1 for s, e in word_spans)  # (within rounding to a sample)
        seen_pauses += len(layout.pauses())
    assert seen_pauses > 0


def test_word_pieces_carry_the_whole_line():
    """Every model line's timed words carry all of its text, including words eSpeak gives no timing."""
    for line in corpus.model_lines():
        clip = CLIPS.get(line, corpus.MODEL_VOICE)
        pieces = common.word_pieces(line, clip.words)
        assert " ".join(pieces) == line and len(pieces) == len(clip.words)
        for piece, word in zip(pieces, clip.words, strict=True):
            assert piece.strip(",.?!").startswith(word.text) or piece.startswith(word.text)
    words = [Word("did", 0.0, 0.1), Word("know", 0.2, 0.3)]
    assert common.word_pieces("I did not know", words) == ["I did not", "know"]
    with pytest.raises(ValueError, match="not in"):
        common.word_pieces("hello there", [Word("bye", 0.0, 0.1)])


def test_beep_shape():
    tone = common.beep(SR)
    assert tone.dtype == np.float32 and tone.size == round(0.150 * SR)
    assert abs(np.abs(tone).max() - 0.3) < 0.01 and abs(tone[0]) < 0.01 and abs(tone[-1]) < 0.01
    spectrum = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spectrum) * SR / tone.size - 1000) < 10


# ----------------------------------------------------------------------------------------------
# Rules every scenario follows


def test_the_registry_holds_every_scenario_module_in_number_order():
    declared = {}
    for module in pkgutil.iter_modules(scenarios.__path__):
        record = getattr(importlib.import_module(f"{scenarios.__name__}.{module.name}"), "SCENARIO", None)
        if record is not None:
            declared[module.name] = record
    assert sorted(declared) == sorted(SCENARIO_NAMES)  # every module declaring one, and only those
    assert all(declared[name] is scenarios.get(name) for name in SCENARIO_NAMES)
    assert [scenarios.get(name).number for name in SCENARIO_NAMES] == list(range(len(SCENARIO_NAMES)))
    # the default mix names registered scenarios, in registry order (its weights follow data.scenarios)
    assert list(config_lib.DEFAULT_SCENARIOS) == [n for n in SCENARIO_NAMES if n in config_lib.DEFAULT_SCENARIOS]
    with pytest.raises(ValueError, match="unknown scenario 'juggling'"):
        make_episode("juggling", 0, ScenarioContext(CFG, CLIPS))
    first = scenarios.get(SCENARIO_NAMES[0])
    with pytest.raises(ValueError, match="registered twice"):
        scenarios.register(first)
    with pytest.raises(ValueError, match=f"the next free number is {len(SCENARIO_NAMES)}"):
        scenarios.register(dataclasses.replace(first, name="juggling"))
    assert scenarios.names() == SCENARIO_NAMES  # nothing was added


@pytest.mark.parametrize(
    "overrides, key, match",
    [
        (["data.scenarios=[turn_taking, chitchat]", "data.weights=[1, 1]"], "data.scenarios", "chitchat"),
        (["data.episode_chunks=44"], "data.episode_chunks", "at least 45 chunks"),
        (["stream.video=false"], "data.scenarios", "rep_count needs the video"),
    ],
)
def test_a_mix_the_registry_cannot_make_is_refused(overrides, key, match):
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), overrides))  # sound as a config
    with pytest.raises(ConfigError, match=match) as refused:
        scenarios.check_mix(cfg)
    assert refused.value.key == key
    scenarios.check_mix(config_lib.preset("tiny"))
    # without video, a mix that leaves the video scenarios out (weight 0) is fine
    no_video = ["stream.video=false", "data.weights=[1, 1, 1, 1, 1, 0, 1]"]
    scenarios.check_mix(config_lib.override(config_lib.preset("tiny"), no_video))


def _numeric_keys(value, key: str = "") -> set[str]:
    """Every key of an annotation tree that holds a number (bools are not numbers), at any depth."""
    if isinstance(value, dict):
        return set().union(*(_numeric_keys(v, k) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return set().union(*(_numeric_keys(v, key) for v in value))
    return {key} if isinstance(value, int | float) and not isinstance(value, bool) else set()


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_number_in_the_annotations_is_declared(name):
    """What each number is (time, chunk or neither) is declared by the scenario that writes it, or common to
    all (the edits move an episode's time line by these declarations)."""
    declared = scenarios.COMMON_ANNOTATION_KEYS | scenarios.get(name).annotation_keys
    keys = set().union(*(_numeric_keys(generate(name, seed)[0].annotations) for seed in SEEDS[:4]))
    assert keys <= set(declared), keys - set(declared)
    assert set(scenarios.get(name).annotation_keys) <= keys  # and nothing is declared that is never written
    assert scenarios.annotation_kinds()["onset_chunk"] == "chunk" and scenarios.annotation_kinds()["cut"] == "time"


def test_an_annotation_key_means_one_thing_in_every_scenario(monkeypatch):
    monkeypatch.setattr(scenarios, "REGISTRY", dict(scenarios.REGISTRY))
    clash = dataclasses.replace(scenarios.get("turn_taking"), name="clash", number=len(scenarios.names()))
    scenarios.register(dataclasses.replace(clash, annotation_keys={"onset_chunk": "time"}))
    with pytest.raises(ValueError, match="annotation 'onset_chunk' of scenario 'clash' is a time, elsewhere a chunk"):
        scenarios.annotation_kinds()


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_shared_rules(name):
    bank = set(corpus.bank_entries("train"))
    for seed in SEEDS:
        ep, requests = generate(name, seed)
        check_episode(ep, CFG)
        assert requests <= bank, requests - bank
        a = ep.annotations
        assert a["user_voice"] in {v.name for v in corpus.user_voices("train")}
        assert 1e-4 <= a["noise_level"] <= 3e-3
        # Before anything happens the user's microphone carries only the background noise.
        assert abs(ep.user_audio[: int(0.1 * SR)].std() / a["noise_level"] - 1) < 0.2
        assert np.abs(ep.user_audio).max() <= 1.0
        end_s = ep.num_chunks * C
        for u in a["user_utterances"]:
            assert 0 <= u["start"] < u["end"] <= end_s
        model_speech = a["model_speech"]
        for previous, following in itertools.pairwise(model_speech):
            assert previous[1] <= following[0]  # the model never talks over itself
        # Model audio is silent outside its utterances.
        outside = np.ones(ep.model_audio.size, bool)
        for s, e in model_speech:
            outside[round(s * SR) : round(e * SR)] = False
        assert not ep.model_audio[outside].any()
        check_model_text(ep)


def check_model_text(ep):
    """Each model utterance starts on a chunk boundary; its words are text events at their speech onsets,
    each SPEAK then the word's bytes (no space: SPEAK is the boundary), then EOT at its end."""
    expected = []
    for u in ep.annotations["model_utterances"]:
        start = round(u["start"] * SR)
        assert start % S == 0, u
        clip = CLIPS.get(u["text"], corpus.MODEL_VOICE)
        end = round(u["end"] * SR)
        assert end - start == clip.audio.size if not u["cut"] else end < start + clip.audio.size
        spoken = [w for w in clip.words if start + round(w.start_s * SR) < end]
        pieces = common.word_pieces(clip.text, clip.words)
        for w, piece in zip(spoken, pieces, strict=False):
            expected.append((u["start"] + w.start_s, (tokenizer.SPEAK, *tokenizer.encode(piece, specials=False))))
        if end < ep.model_audio.size:
            expected.append((u["end"], (tokenizer.EOT,)))
        assert spoken and int(np.floor((u["start"] + spoken[0].start_s) / C + 1e-9)) == start // S
        if not u["cut"]:  # the whole line is written out, punctuation and all, then EOT
            events = [e for e in ep.model_text if u["start"] <= e.time_s < u["end"]]
            said = [
                t for e in sorted(events, key=lambda e: e.time_s) if e.tokens[0] != tokenizer.DELEGATE for t in e.tokens
            ]
            assert tokenizer.spoken_text(said) == " ".join(u["text"].split())
            assert said[0] == tokenizer.SPEAK and said.count(tokenizer.SPEAK) == len(spoken)
    speech_events = [(e.time_s, e.tokens) for e in ep.model_text if e.tokens[0] != tokenizer.DELEGATE]
    assert len(speech_events) == len(expected)
    for (t, tokens), (t_expected, tokens_expected) in zip(speech_events, sorted(expected), strict=True):
        assert tokens == tokens_expected and abs(t - t_expected) < 1e-6


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_deterministic_and_seed_dependent(name):
    first, _ = generate(name, 0)
    clips = RecordingClips(CLIPS)
    again = make_episode(name, 0, ScenarioContext(CFG, clips, "train"))
    np.testing.assert_array_equal(first.user_audio, again.user_audio)
    np.testing.assert_array_equal(first.model_audio, again.model_audio)
    np.testing.assert_array_equal(first.frames, again.frames)
    assert first.user_text == again.user_text and first.model_text == again.model_text
    assert first.annotations == again.annotations
    other, _ = generate(name, 1)
    assert not np.array_equal(first.user_audio, other.user_audio)
    assert first.annotations != other.annotations


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_heldout_episodes_use_heldout_voices_and_lines(name):
    bank = set(corpus.bank_entries("heldout"))
    heldout_voices = set(corpus.user_voices("heldout"))
    heldout_lines = {line for c in corpus.CATEGORIES for line in corpus.user_lines(c, "heldout")}
    for seed in range(4):
        ep, requests = generate(name, seed, "heldout")
        assert ep.split == "heldout"
        assert requests <= bank, requests - bank
        for text, voice in requests:
            assert voice == corpus.MODEL_VOICE or (voice in heldout_voices and text in heldout_lines)
        for u in ep.annotations["user_utterances"]:
            assert u["text"] in heldout_lines


@pytest.mark.parametrize("name", [n for n in SCENARIO_NAMES if not scenarios.get(n).needs_video])
def test_video_off(name):
    for seed in range(4):
        ep, _ = generate(name, seed, video=False)
        assert ep.frames is None
        check_episode(ep, dataclasses.replace(CFG, video=False))


def test_rep_count_needs_video():
    with pytest.raises(ValueError, match="needs video"):
        generate("rep_count", 0, video=False)


def test_minimum_episode_length_fits_every_scenario():
    for name, seed in itertools.product(SCENARIO_NAMES, range(40)):
        ctx = ScenarioContext(
            CFG, CLIPS, "train", num_chunks=math.ceil(1000 * scenarios.get(name).min_seconds / CFG.chunk_ms)
        )
        check_episode(make_episode(name, seed, ctx), CFG)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_too_short_episodes_are_refused(name):
    with pytest.raises(EpisodeTooShort, match=r"leave no room"):
        make_episode(name, 0, ScenarioContext(CFG, CLIPS, "train", num_chunks=5))


def test_long_episodes_repeat_exchanges():
    """In 30 s episodes the scenarios that loop fit several exchanges, and counting goes further."""
    most = {name: 0 for name in SCENARIO_NAMES}
    for name, seed in itertools.product(SCENARIO_NAMES, range(3)):
        ep, _ = generate(name, seed, num_chunks=150)
        check_model_text(ep)
        a = ep.annotations
        found = {
            "turn_taking": len(a.get("replies", [])),
            "backchannel": len(a.get("backchannels", [])),
            "interruption": 2 * (len(a["model_utterances"]) == 2),
            "time_speak": len(a.get("requests", [])),
            "cue_speak": len(a.get("cues", [])),
            "rep_count": a.get("count", 0) // 2,
            "delegate": len(a.get("delegations", [])),
        }[name]
        most[name] = max(most[name], found)
    assert all(n >= 2 for n in most.values()), most


@pytest.mark.parametrize("name", ["interruption", "cue_speak", "time_speak", "rep_count", "delegate"])
def test_spoken_requests_pause_and_the_model_waits_through_the_pauses(name):
    """Not only turn_taking's statements pause: every answered utterance may, so that a short stretch of
    speech followed by silence does not mean "answer now" in the other scenarios."""
    paused = 0
    for ep in episodes(name):
        a = ep.annotations
        for u in a["user_utterances"]:
            for s, e in u["pauses"]:
                assert common.SPOKEN_PAUSE_S[0] - 1e-3 <= e - s <= common.SPOKEN_PAUSE_S[1] + 1e-3
                assert u["start"] < s < e < u["end"] and not u["typed"]
                # the model never starts speaking in a pause (it may still be finishing a reply there)
                assert not any(s < start < e for start, _ in a["model_speech"]), (ep.seed, u["text"], (s, e))
            paused += bool(u["pauses"])
    assert paused, f"no {name} utterance pauses"


@pytest.mark.parametrize("name", [n for n in SCENARIO_NAMES if n != "rep_count"])
def test_with_the_camera_off_frames_are_black_and_nothing_is_visual(name):
    for seed in range(4):
        ctx = ScenarioContext(CFG, CLIPS, "train", 50, camera=False)
        ep = make_episode(name, seed, ctx)
        assert ep.frames is not None and ep.frames.shape[0] == 10 and not ep.frames.any()
        assert all(c["kind"] == "audio" for c in ep.annotations.get("cues", []))
        seen = generate(name, seed)[0]  # the same seed with the camera on: the same sound
        if name != "cue_speak":  # (a visual cue there becomes a beep, so its timing changes)
            np.testing.assert_array_equal(ep.user_audio, seen.user_audio)
            assert ep.annotations == seen.annotations


def test_rep_count_refuses_a_camera_that_is_off():
    with pytest.raises(ValueError, match="camera on"):
        make_episode("rep_count", 0, ScenarioContext(CFG, CLIPS, "train", 50, camera=False))


# ----------------------------------------------------------------------------------------------
# Scenario by scenario


def test_turn_taking():
    paused = 0
    for ep in episodes("turn_taking"):
        a = ep.annotations
        spans = [(u["start"], u["end"]) for u in a["user_utterances"]]
        assert len(a["replies"]) == len(spans) == len(a["model_utterances"]) >= 1
        for s, e in a["model_speech"]:
            assert not any(overlaps((s, e), span) for span in spans)  # pauses included
        for reply, model in zip(a["replies"], a["model_utterances"], strict=True):
            assert last_chunk_of(reply["user_end"]) + 1 <= reply["onset_chunk"] <= last_chunk_of(reply["user_end"]) + 2
            assert model["start"] == pytest.approx(reply["onset_chunk"] * C)
            assert model["text"] in corpus.REPLIES
        for u in a["user_utterances"]:
            for s, e in u["pauses"]:
                assert 0.4 - 1e-3 <= e - s <= 2.0 + 1e-3 and u["start"] < s < e < u["end"]
            paused += bool(u["pauses"])
    assert paused  # some utterances have pauses the model had to wait through


def test_backchannel():
    count = 0
    for ep in episodes("backchannel"):
        a = ep.annotations
        speech = a["user_speech"]
        gaps = [(previous[1], following[0]) for previous, following in itertools.pairwise(speech)]
        gaps.append((speech[-1][1], ep.num_chunks * C))  # after the monologue, to the episode's end
        statement_ends = [u["end"] for u in a["user_utterances"]]
        for u in a["model_utterances"]:
            assert u["text"] in corpus.BACKCHANNELS
            assert any(g0 <= u["start"] and u["end"] <= g1 for g0, g1 in gaps), u  # in a pause, or after the end
            # ...and only after a whole statement: inside one it stays silent, as in turn_taking
            assert not any(s["start"] < u["start"] < s["end"] for s in a["user_utterances"]), u
        for b, u in zip(a["backchannels"], a["model_utterances"], strict=True):
            assert b["onset_chunk"] * C == pytest.approx(u["start"]) and u["end"] <= b["pause"][1]
            assert b["onset_chunk"] in (last_chunk_of(b["pause"][0]) + 1, last_chunk_of(b["pause"][0]) + 2)
            assert any(b["pause"][0] == pytest.approx(end) for end in statement_ends)
        count += len(a["backchannels"])
    assert count >= len(SEEDS)  # about one or more per episode


def test_interruption():
    for ep in episodes("interruption"):
        a = ep.annotations
        reply, answer = a["model_utterances"]
        statement, barge_in = a["user_utterances"]
        assert reply["cut"] and not answer["cut"] and reply["text"] in corpus.LONG_REPLIES
        assert reply["start"] >= statement["end"] and barge_in["start"] == pytest.approx(a["barge_in"])
        assert a["barge_in"] - reply["start"] >= 0.6
        assert a["cut_chunk"] == round(a["barge_in"] * SR) // S
        assert reply["end"] == pytest.approx(a["cut"]) and a["cut"] == pytest.approx((a["cut_chunk"] + 1) * C)
        cut = round(a["cut"] * SR)
        assert abs(ep.model_audio[cut - 1]) < 0.01  # faded out, no click
        assert answer["start"] >= barge_in["end"] and answer["text"] in corpus.INTERRUPTION_ANSWERS
        assert last_chunk_of(barge_in["end"]) + 1 <= round(answer["start"] / C) <= last_chunk_of(barge_in["end"]) + 2


def assert_acknowledged(request_end: float, ack: dict, ack_end: float, then: dict) -> None:
    """The model says "okay" to a finished request by the reply rule, and what the request asks for
    starts a chunk after that at the earliest."""
    assert ack["text"] in corpus.ACKNOWLEDGEMENTS and ack["end"] == pytest.approx(ack_end)
    assert last_chunk_of(request_end) + 1 <= round(ack["start"] / C) <= last_chunk_of(request_end) + 2
    assert then["start"] >= ack_end + C - 1e-9


# The lines each scenario draws its words from at random (`model_lines`: the words CER's references).
DRAWN_FROM = {
    "turn_taking": {corpus.REPLIES},
    "backchannel": {corpus.BACKCHANNELS},
    "interruption": {corpus.LONG_REPLIES, corpus.INTERRUPTION_ANSWERS},
    "time_speak": {corpus.ACKNOWLEDGEMENTS, corpus.TIMER_RESPONSES},
    "cue_speak": {corpus.ACKNOWLEDGEMENTS, *corpus.CUE_RESPONSES.values()},
    "rep_count": {corpus.ACKNOWLEDGEMENTS},
    "delegate": {(corpus.LET_ME_CHECK, "")},
}


@pytest.mark.parametrize("name", scenarios.names())
def test_model_lines_name_what_each_utterance_was_drawn_from(name):
    """Every utterance has its line, at its start, with the words said among the choices; a drawn line's
    choices are its whole set (a backchannel's: those that fit the pause), a cut one's cut to as many
    words; a line that is always the same (a count, a delegate's answer) has one choice; "let me check" is
    a line whether it was said or not, as is a backchannel."""
    norm = lambda line, words=None: " ".join(line.split()[:words])
    sets = [sorted({norm(x) for x in lines}) for lines in DRAWN_FROM[name]]
    for ep in episodes(name):
        lines, said = ep.annotations["model_lines"], ep.annotations["model_utterances"]
        starts = [line["start"] for line in lines]
        assert starts == sorted(starts) and len(lines) >= len(said) and lines
        for u in said:
            (line,) = [line for line in lines if line["start"] == pytest.approx(u["start"])]
            words = max(len(c.split()) for c in line["choices"]) if u["cut"] else None
            assert norm(u["text"], words) in line["choices"]
            if u["cut"]:
                assert line["choices"] == sorted({norm(x, words) for x in corpus.LONG_REPLIES})
            elif name == "backchannel":
                assert "" in line["choices"] and set(line["choices"]) <= {"", *corpus.BACKCHANNELS}
            elif len(line["choices"]) > 1:
                assert line["choices"] in sets, line
        if name == "backchannel":  # every pause that could hold one has a line, acknowledged or not
            assert len(lines) >= len(ep.annotations["backchannels"])
        if name == "delegate":
            optional = [line for line in lines if "" in line["choices"]]
            assert len(optional) == len(ep.annotations["delegations"])
            assert all(line["choices"] == ["", corpus.LET_ME_CHECK] for line in optional)


def test_time_speak():
    typed = 0
    for ep in episodes("time_speak"):
        a = ep.annotations
        assert 2 * len(a["requests"]) == len(a["model_utterances"]) >= 2
        acks, responses = a["model_utterances"][::2], a["model_utterances"][1::2]
        for r, u, ack, m in zip(a["requests"], a["user_utterances"], acks, responses, strict=True):
            assert corpus.time_request_seconds(u["text"]) == r["n"] and u["typed"] == r["typed"]
            assert r["target_time"] == pytest.approx(r["request_end"] + r["n"])
            assert abs(r["onset_chunk"] * C - r["target_time"]) <= C / 2 + 1e-9
            assert m["start"] == pytest.approx(r["onset_chunk"] * C) and m["text"] in corpus.TIMER_RESPONSES
            assert u["end"] == pytest.approx(r["request_end"])
            assert_acknowledged(r["request_end"], ack, r["ack_end"], m)
        for u in a["user_utterances"]:
            if u["typed"]:  # the request ends with the chunk its last typed token is rendered in
                # the same line can be typed twice in an episode: the event is the one typed at u's start
                (event,) = [
                    e
                    for e in ep.user_text
                    if tokenizer.decode(e.tokens) == u["text"] and e.time_s == pytest.approx(u["start"])
                ]
                placed, _ = place_text([event], ep.num_chunks, CFG.text_in_slots, CFG)
                landed = max(k for k in range(ep.num_chunks) if (placed[k] != tokenizer.PAD).any())
                assert u["end"] == pytest.approx((landed + 1) * C)
                typed += 1
        assert decoded(ep.user_text) == "".join(u["text"] for u in a["user_utterances"] if u["typed"])
    assert 0 < typed < len(SEEDS)


def test_cue_speak():
    kinds = set()
    for video in (True, False):
        for ep in episodes("cue_speak", video=video):
            a = ep.annotations
            assert 2 * len(a["cues"]) == len(a["model_utterances"]) >= 2
            acks, responses = a["model_utterances"][::2], a["model_utterances"][1::2]
            for cue, request, ack, m in zip(a["cues"], a["user_utterances"], acks, responses, strict=True):
                kinds.add((video, cue["kind"]))
                assert cue["onset_chunk"] == cue["perceived_chunk"] + 1
                assert m["start"] == pytest.approx(cue["onset_chunk"] * C)  # nothing else said before the cue
                assert_acknowledged(request["end"], ack, cue["ack_end"], m)
                assert cue["time"] >= cue["ack_end"] + C - 1e-9  # no cue while it says "okay"
                assert m["text"] in corpus.CUE_RESPONSES[cue["kind"]]
                assert cue["time"] >= request["end"] and request["text"] in corpus.user_lines(
                    f"cue_{cue['kind']}_request", "train"
                )
                if cue["kind"] == "visual":
                    frame = cue["perceived_chunk"] // CFG.video_every
                    assert cue["perceived_chunk"] % CFG.video_every == 0
                    assert cue["time"] == pytest.approx(cue["perceived_chunk"] * C)
                    assert red_pixels(ep.frames[frame]) > 100 and red_pixels(ep.frames[frame - 1]) == 0
                else:
                    beep_end = round(cue["time"] * SR) + round(common.BEEP_S * SR)
                    assert cue["perceived_chunk"] == (beep_end - 1) // S
                    tone = ep.user_audio[round(cue["time"] * SR) : beep_end]
                    assert np.abs(tone).max() > 0.25
    assert kinds == {(True, "visual"), (True, "audio"), (False, "audio")}


def red_pixels(frame: np.ndarray) -> int:
    return int((np.abs(frame.astype(int) - np.array(video_scene.CUE_RED)).sum(-1) == 0).sum())


def test_rep_count():
    counts = []
    frame_s = CFG.video_every * C
    for ep in episodes("rep_count"):
        a = ep.annotations
        n = a["count"]
        counts.append(n)
        assert 1 <= n <= 6 and len(a["completions"]) == len(a["onset_chunks"]) == n
        ack, first = a["model_utterances"][:2]
        assert_acknowledged(a["user_utterances"][0]["end"], ack, a["ack_end"], first)
        words = (ack["text"], *corpus.NUMBER_WORDS[:n])
        assert decoded(ep.model_text) == "".join(f"<speak>{w.replace(' ', '<speak>')}<eot>" for w in words)
        for completion, onset in zip(a["completions"], a["onset_chunks"], strict=True):
            shown = onset - 1  # the chunk carrying the first frame that shows the completion
            assert shown % CFG.video_every == 0
            assert completion - 1e-9 <= shown * C < completion + frame_s
        periods = np.diff([a["user_utterances"][0]["end"], *a["completions"]])[1:]
        assert (periods >= 3 * frame_s - 1e-9).all()
        # The object moves: frames after the request differ from each other beyond the distractors' drift.
        assert len({ep.frames[f].tobytes() for f in range(len(ep.frames))}) > 1
    assert max(counts) >= 2


def test_delegate():
    interjections = checks = 0
    for ep in episodes("delegate"):
        a = ep.annotations
        user_spans = [(u["start"], u["end"]) for u in a["user_utterances"]]
        answers = [m for m in a["model_utterances"] if m["text"] != corpus.LET_ME_CHECK]
        assert len(answers) == len(a["delegations"]) >= 1
        requests = [e for e in ep.model_text if e.tokens[0] == tokenizer.DELEGATE]
        results = [e for e in ep.user_text if e.tokens[0] == tokenizer.RESULT]
        for d, answer, request, result in zip(a["delegations"], answers, requests, results, strict=True):
            assert not any(overlaps((answer["start"], answer["end"]), span) for span in user_spans)
            assert tokenizer.decode(request.tokens) == f"<delegate>{d['request']}</delegate>"
            assert tokenizer.decode(result.tokens) == f"<result>{d['answer']}</result>"
            assert request.time_s == pytest.approx(d["request_chunk"] * C)
            assert request.time_s < result.time_s < answer["start"]
            assert answer["start"] == pytest.approx(d["onset_chunk"] * C)
            assert answer["text"] == corpus.delegate_answer_line(d["answer"])
            if d["request"] == "time":
                assert d["answer"] in corpus.CLOCK_TIMES and d["question"] == corpus.time_question("train")
            else:
                x, y = map(int, re.findall(r"\d+", d["question"]))
                assert d["request"] == f"{x}+{y}" and d["answer"] == str(x + y)
            # The result is delivered 0.4–3 s after the request has been written out.
            written = (d["request_chunk"] + -(-len(request.tokens) // CFG.text_out_slots)) * C
            assert 0.4 - 1e-6 <= result.time_s - written <= 3.0 + 1e-6
            # The answer waits until the result has fully arrived.
            landed = d["result_chunk"] + -(-len(result.tokens) // CFG.text_in_slots) - 1
            assert d["onset_chunk"] >= landed + 1
            interjections += d["interjection"]
            checks += d["let_me_check"]
    assert interjections > 0 and checks > 0


@pytest.mark.parametrize("name", ["turn_taking", "interruption", "delegate"])
def test_the_speak_decision_in_the_rendered_stream(name):
    """In TEXT_OUT, every utterance starts with SPEAK in the chunk its speech starts in (the decision is
    one token against PAD), each spoken word has exactly one SPEAK, EOT closes the utterance, and the
    words read back as the line (cut ones: the words begun); a late SPEAK only follows a backlog."""
    for ep in episodes(name, seeds=range(6)):
        text_out, stats = place_text(ep.model_text, ep.num_chunks, CFG.text_out_slots, CFG)
        flat = text_out.ravel()
        slot_chunk = np.repeat(np.arange(ep.num_chunks), CFG.text_out_slots)
        said = [t for t in flat if t != tokenizer.DELEGATE]
        words = sum(e.tokens.count(tokenizer.SPEAK) for e in ep.model_text)
        assert said.count(tokenizer.SPEAK) == words == sum(1 for e in ep.model_text if e.tokens[0] == tokenizer.SPEAK)
        assert not any(
            t < tokenizer.NUM_BYTES and chr(t) == " " and prev == tokenizer.SPEAK
            for prev, t in itertools.pairwise(flat)
        )
        for u in ep.annotations["model_utterances"]:
            start, end = round(u["start"] / C), int(np.ceil(u["end"] / C - 1e-9))
            window = slice(start * CFG.text_out_slots, min(end + 2, ep.num_chunks) * CFG.text_out_slots)
            ids = [t for t in flat[window] if t != tokenizer.PAD]
            first = np.flatnonzero(flat == tokenizer.SPEAK)
            first = first[slot_chunk[first] >= start][0]
            assert slot_chunk[first] == start or stats.delayed_events > 0
            assert tokenizer.EOT in ids or end >= ep.num_chunks - 1
            line = tokenizer.spoken_text(ids[: ids.index(tokenizer.EOT)] if tokenizer.EOT in ids else ids)
            expected = " ".join(u["text"].split())
            assert line == expected if not u["cut"] else (expected.startswith(line) and line)
