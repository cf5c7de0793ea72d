"""Evaluation: behaviour metrics on hand-made rollouts, rollouts that really feed the episode, `evaluate`'s files."""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.audio import wav
from interaction_jax.data import render, scenarios
from interaction_jax.data.bank import LiveClips
from interaction_jax.data.scenarios import (
    backchannel,
    cue_speak,
    delegate,
    interruption,
    rep_count,
    scoring,
    time_speak,
    turn_taking,
)
from interaction_jax.eval import behaviour, evaluate, report, rollout
from interaction_jax.eval.rollout import cache_capacity, vocode
from interaction_jax.model import cache, step

CFG = config_lib.validate(
    config_lib.override(
        config_lib.preset("tiny"),
        [
            "model.n_layers=1",
            "model.d_model=64",
            "model.n_heads=2",
            "model.n_kv_heads=1",
            "model.head_dim=32",
            "model.n_experts=2",
            "model.top_k=1",
            "model.expert_mlp=64",
            "model.flow_hidden=64",
            "model.flow_blocks=1",
            "model.moe_dispatch=dense",
            "serve.flow_steps=2",
            "data.episode_chunks=45",
        ],
    )
)
S = CFG.stream
N = 45  # chunks in the hand-made rollouts (the real ones too)
PAD = tokenizer.PAD


@pytest.fixture(scope="module")
def clips():
    return LiveClips(S.sample_rate)


@pytest.fixture(scope="module")
def params():
    """Random parameters of the right shapes, drawn with numpy (compiling `init_params` would cost more than
    the rest of the file). Every leaf is random: the real init zeroes the flow head's modulation and
    output, which makes a fresh model's mel ignore its input (and a check that the input reaches it vacuous)."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return 1.0 + 0.05 * rng.standard_normal(leaf.shape).astype(leaf.dtype)
        std = 0.05 if leaf.ndim < 2 else 1.0 / np.sqrt(leaf.shape[-2])
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    shapes = jax.eval_shape(step.init_params, CFG, jax.random.key(0))
    return jax.device_put(jax.tree_util.tree_map_with_path(draw, shapes))


@pytest.fixture(scope="module")
def episode(clips):
    return report.eval_episode(CFG, "cue_speak", 0, clips)


# ----------------------------------------------------------------------------------------------
# Hand-made rollouts


def silent(n: int = N) -> np.ndarray:
    return np.full((n, S.text_out_slots), PAD, np.int32)


def say(text: np.ndarray, chunk: int, words: str) -> np.ndarray:
    """`words` written into TEXT_OUT from `chunk` on, text_out_slots bytes per chunk (spilling like render)."""
    out = text.copy()
    tokens = tokenizer.encode(words)
    for i, t in enumerate(tokens):
        k, slot = chunk + i // S.text_out_slots, i % S.text_out_slots
        out[k, slot] = t
    return out


def active(chunks, n: int = N) -> np.ndarray:
    text = silent(n)
    for k in chunks:
        text = say(text, k, "a")
    return text


def test_text_activity_ignores_pad_and_eot_and_chunk_boundaries_are_exact():
    text = silent(4)
    text[1, 2] = tokenizer.EOT
    text[2, 0] = ord("x")
    text[3, 3] = tokenizer.DELEGATE
    assert scoring.text_active(text).tolist() == [False, False, True, True]
    # a stretch ending exactly on a chunk boundary ends in the chunk before it
    assert scoring.end_chunk(1.2, S) == 5 and scoring.end_chunk(1.2001, S) == 6
    assert scoring.span_chunks([[0.3, 1.0]], 8, S).tolist() == [False, True, True, True, True, False, False, False]


TURN = {
    "replies": [{"user_end": 1.05, "onset_chunk": 6}],  # e = 5: the data replies in chunk 6 or 7
    "user_speech": [[0.2, 0.5], [0.9, 1.05]],
    "user_utterances": [{"start": 0.2, "end": 1.05, "pauses": [[0.5, 0.9]], "typed": False}],
}


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([6], {"reply_latency_chunks": 1.0, "reply_on_time": 1.0, "reply_missed": 0.0, "pause_false_start": 0.0}),
        ([7], {"reply_latency_chunks": 2.0, "reply_on_time": 1.0, "reply_missed": 0.0}),
        ([9], {"reply_latency_chunks": 4.0, "reply_on_time": 0.0, "reply_missed": 0.0}),
        ([11], {"reply_latency_chunks": None, "reply_on_time": 0.0, "reply_missed": 1.0}),
        ([], {"reply_latency_chunks": None, "reply_on_time": 0.0, "reply_missed": 1.0, "pause_false_start": 0.0}),
        ([3, 6], {"reply_on_time": 1.0, "pause_false_start": 1.0}),  # speaks in the mid-utterance pause
        ([5], {"reply_latency_chunks": None, "reply_missed": 1.0}),  # speaking in the user's last chunk: no reply
    ],
)
def test_turn_taking(chunks, expected):
    m = turn_taking.metrics(TURN, active(chunks), S)
    assert m["n_replies"] == 1 and m["n_pauses"] == 1
    for key, value in expected.items():
        assert m[key] == pytest.approx(value) if value is not None else m[key] is None, key
    if chunks == [6]:
        assert m["reply_latency_s"] == pytest.approx(6 * 0.2 - 1.05)


def test_talk_over_and_agreement():
    reference = active([6, 8])
    m = behaviour.common(TURN, active([1, 6, 8]), S, reference_text=reference)
    user_chunks = scoring.span_chunks(TURN["user_speech"], N, S)
    assert m["talk_over_rate"] == pytest.approx(1 / user_chunks.sum())
    assert m["text_agreement"] == pytest.approx((N - 1) / N)
    assert behaviour.common(TURN, reference, S, reference_text=reference)["text_agreement"] == 1.0


def test_time_speak():
    ann = {
        "requests": [
            {"n": 3, "request_end": 2.0, "target_time": 5.0, "onset_chunk": 25},
            {"n": 2, "request_end": 7.0, "target_time": 9.0, "onset_chunk": 45 - 1},
        ],
        "user_utterances": [{"start": 0.5, "end": 2.0}, {"start": 6.0, "end": 7.0}],
    }
    exact = time_speak.metrics(ann, active([25, 44]), S)
    assert exact["timer_abs_error_s"] == pytest.approx((0 + abs(44 * 0.2 - 9.0)) / 2)
    assert exact["timer_hit"] == 1.0 and exact["timer_missed"] == 0.0 and exact["n_requests"] == 2
    late = time_speak.metrics(ann, active([27]), S)  # 0.4 s late; nothing for the second request
    assert late["timer_error_s"] == pytest.approx(0.4) and late["timer_hit"] == 0.0 and late["timer_missed"] == 0.5
    # speaking before the request ends is not an answer to it; the window closes at the next request
    early = time_speak.metrics(ann, active([5, 28]), S)
    assert early["timer_error_s"] == pytest.approx(28 * 0.2 - 5.0) and early["timer_missed"] == 0.5
    assert time_speak.metrics(ann, active([31]), S)["timer_missed"] == 1.0
    never = time_speak.metrics(ann, silent(), S)
    assert never["timer_hit"] == 0.0 and never["timer_missed"] == 1.0 and never["timer_abs_error_s"] is None
    # the "okay" to a request (chunks 11–12, its speech over at 2.6 s) is not the timer's answer
    acked = {**ann, "requests": [{**r, "ack_end": r["request_end"] + 0.6} for r in ann["requests"]]}
    assert time_speak.metrics(acked, active([11, 12, 25, 44]), S) == exact
    assert time_speak.metrics(ann, active([11, 12, 25, 44]), S)["timer_hit"] == 0.5  # control: without ack_end


def test_cue_speak():
    ann = {
        "cues": [{"kind": "audio", "time": 4.0, "perceived_chunk": 20, "onset_chunk": 21}],
        "user_utterances": [{"start": 0.5, "end": 2.0}],
    }
    on_time = cue_speak.metrics(ann, active([21]), S)
    assert on_time == {
        "cue_latency_chunks": 1.0,
        "cue_hit": 1.0,
        "cue_missed": 0.0,
        "cue_premature": 0.0,
        "n_cues": 1,
    }
    jumpy = cue_speak.metrics(ann, active([15, 24]), S)
    assert jumpy["cue_premature"] == 1.0 and jumpy["cue_latency_chunks"] == 4.0 and jumpy["cue_hit"] == 0.0
    assert cue_speak.metrics(ann, active([5]), S)["cue_premature"] == 0.0  # during the request: not waiting yet
    never = cue_speak.metrics(ann, silent(), S)
    assert never["cue_missed"] == 1.0 and never["cue_hit"] == 0.0 and never["cue_latency_chunks"] is None
    # the "okay" to the request (chunks 11–12, over at 2.6 s) is not speaking before the cue; later talk is
    acked = {**ann, "cues": [{**ann["cues"][0], "ack_end": 2.6}]}
    assert cue_speak.metrics(acked, active([11, 12, 21]), S) == on_time
    assert cue_speak.metrics(acked, active([11, 12, 15, 21]), S)["cue_premature"] == 1.0
    assert cue_speak.metrics(ann, active([11, 12, 21]), S)["cue_premature"] == 1.0  # control: without ack_end


def test_rep_count():
    ann = {"count": 3, "onset_chunks": [10, 20, 30]}
    text = say(say(say(silent(), 10, "one"), 20, " two"), 30, " three<eot>")  # "three" spills into chunk 31
    right = rep_count.metrics(ann, text, S)
    assert right["count_correct"] == 1.0 and right["count_error"] == 0.0
    assert right["number_abs_error_chunks"] == 0.0 and right["number_hit"] == 1.0 and right["numbers_said"] == 1.0
    short = rep_count.metrics(ann, say(say(silent(), 12, "One"), 25, " two"), S)
    assert short["count_correct"] == 0.0 and short["count_error"] == -1.0
    assert short["numbers_said"] == pytest.approx(2 / 3) and short["number_abs_error_chunks"] == pytest.approx(3.5)
    assert rep_count.number_words(say(silent(), 3, "someone twofold")) == []  # whole words only
    never = rep_count.metrics(ann, silent(), S)
    assert never["count_correct"] == 0.0 and never["count_error"] is None and never["numbers_said"] == 0.0


def test_interruption():
    ann = {
        "cut_chunk": 16,
        "barge_in": 3.25,
        "model_utterances": [{"start": 2.0, "end": 3.4, "cut": True}, {"start": 4.8, "end": 6.0, "cut": False}],
        "user_utterances": [{"start": 0.2, "end": 1.8}, {"start": 3.25, "end": 4.4}],  # barge-in ends in chunk 21
    }
    yields = interruption.metrics(ann, active([10, 12, 16, 22]), S)
    assert yields["talking_at_barge_in"] == 1.0 and yields["yielded"] == 1.0 and yields["stop_latency_chunks"] == 0.0
    assert yields["answer_latency_chunks"] == 1.0 and yields["answer_on_time"] == 1.0
    late = interruption.metrics(ann, active([10, 17, 18]), S)
    assert late["yielded"] == 1.0 and late["stop_latency_chunks"] == 2.0
    talks_on = interruption.metrics(ann, active(range(10, 20)), S)
    assert talks_on["yielded"] == 0.0 and talks_on["stop_latency_chunks"] == 3.0
    mute = interruption.metrics(ann, silent(), S)
    assert mute["talking_at_barge_in"] == 0.0 and mute["yielded"] is None and mute["answer_on_time"] == 0.0


def test_backchannel_and_delegate():
    bc = {"backchannels": [{"pause": [1.0, 2.0], "onset_chunk": 6}, {"pause": [5.0, 6.0], "onset_chunk": 26}]}
    assert backchannel.metrics(bc, active([7]), S) == {"backchannel_hit": 0.5, "n_backchannels": 2}
    assert backchannel.metrics({"backchannels": []}, active([7]), S)["backchannel_hit"] is None

    ann = {"delegations": [{"request": "9+13", "answer": "22", "request_chunk": 10, "result_chunk": 20}]}
    good = say(say(silent(), 11, "<delegate>9+13</delegate>"), 24, "it is 22<eot>")
    m = delegate.metrics(ann, good, S)
    assert m == {
        "delegate_hit": 1.0,
        "request_exact": 1.0,
        "answer_said": 1.0,
        "answer_delay_chunks": 5.0,
        "n_delegations": 1,
    }
    wrong = say(say(silent(), 14, "<delegate>9+12</delegate>"), 16, "it is 22 or 122")  # early answer: not said
    m = delegate.metrics(ann, wrong, S)
    assert m["delegate_hit"] == 0.0 and m["answer_said"] == 0.0 and m["answer_delay_chunks"] is None
    assert delegate.metrics(ann, say(silent(), 10, "<delegate>9+12</delegate>"), S)["request_exact"] == 0.0
    # a request broken by another special is no request, by the session's rule (tokenizer.RequestReader),
    # even when the right text and an END_DELEGATE follow later
    broken = delegate.metrics(ann, say(silent(), 10, "<delegate>9+<speak>13</delegate>"), S)
    assert broken["delegate_hit"] == 1.0 and broken["request_exact"] == 0.0


def test_aggregate_skips_what_does_not_apply():
    agg = behaviour.aggregate(
        [{"a": 1.0, "b": None, "n_x": 2}, {"a": 0.0, "b": float("nan"), "n_x": 3}, {"a": 0.5, "b": 4.0, "n_x": 0}]
    )
    assert agg["a"] == {"mean": 0.5, "std": pytest.approx(np.std([1.0, 0.0, 0.5])), "n": 3}
    assert agg["b"] == {"mean": 4.0, "std": 0.0, "n": 1}
    assert agg["n_x"] == {"mean": 5.0, "n": 3}
    assert report.format_value({"mean": 0.5, "n": 2}, "count") == "1/2"
    assert report.format_value({"mean": None, "n": 0}, "pct") == "n/a"
    assert report.plottable(np.array([[0, 65, 200, 256]])).tolist() == [[63, 65, 63, 256]]


@pytest.mark.parametrize("scenario", scenarios.names())
def test_the_data_scores_perfectly_on_its_own_episodes(scenario, clips):
    """The metrics read the real annotations as intended: the episode's own output is on time everywhere."""
    ep = report.eval_episode(CFG, scenario, 0, clips)
    payloads, _ = render.chunk_payloads(ep, S)
    text = np.stack([p.text_out for p in payloads])
    m = behaviour.episode_metrics(scenario, ep.annotations, text, S, reference_text=text)
    assert m["text_agreement"] == 1.0 and m["text_cer"] == 0.0 and m["text_cer_drawn"] == 0.0
    # the lines the data drew are among those it could have drawn, and another draw scores 0 as well
    lines = ep.annotations["model_lines"]
    assert lines and all(len(line["choices"]) >= 1 for line in lines)
    other = " ".join(c for c in (line["choices"][-1] for line in lines) if c)
    assert (
        behaviour.nearest_lines_distance(other.lower(), [[c.lower() for c in line["choices"]] for line in lines])[0]
        == 0
    )
    perfect = {
        "turn_taking": {"reply_on_time": 1.0, "reply_missed": 0.0, "pause_false_start": 0.0, "talk_over_rate": 0.0},
        "backchannel": {"backchannel_hit": 1.0 if ep.annotations.get("backchannels") else None, "talk_over_rate": 0.0},
        "interruption": {"talking_at_barge_in": 1.0, "yielded": 1.0, "answer_on_time": 1.0},
        "time_speak": {"timer_hit": 1.0, "timer_missed": 0.0, "talk_over_rate": 0.0},
        "cue_speak": {"cue_hit": 1.0, "cue_latency_chunks": 1.0, "cue_premature": 0.0, "talk_over_rate": 0.0},
        "rep_count": {"count_correct": 1.0, "number_abs_error_chunks": 0.0, "number_hit": 1.0},
        "delegate": {"delegate_hit": 1.0, "request_exact": 1.0, "answer_said": 1.0},
    }[scenario]
    for key, value in perfect.items():
        assert m[key] == value, (key, m)
    assert set(m) == set(behaviour.episode_metrics(scenario, ep.annotations, silent(), S))  # keys fixed per scenario
    if scenario == "time_speak":
        assert m["timer_abs_error_s"] <= 0.1 + 1e-9  # nearest chunk start to the target
    # a mute model fails what the data passes
    mute = behaviour.episode_metrics(scenario, ep.annotations, silent(ep.num_chunks), S, reference_text=text)
    assert mute["text_agreement"] < 1.0 and mute["text_rate"] == 0.0 and mute["text_cer"] == 1.0


def test_character_error_rate_of_the_words_said():
    """CER compares the words said (SPEAK and EOT as breaks, requests not spoken, case ignored) with the
    reference's: hand-made cases with a known edit distance."""
    assert behaviour.edit_distance("kitten", "sitting") == 3
    assert behaviour.edit_distance("", "abc") == 3 and behaviour.edit_distance("abc", "abc") == 0
    reference = say(silent(), 3, "<speak>Sure,<speak>it's<speak>four.<eot>")  # "Sure, it's four." (16 chars)
    cer = lambda text: behaviour.character_error_rate(text, reference)
    assert cer(reference) == 0.0
    assert cer(say(silent(), 9, "<speak>sure,<speak>it's<speak>four.<eot>")) == 0.0  # case and timing do not count
    assert cer(say(silent(), 3, "<speak>Sure,<speak>it's<speak>five.<eot>")) == pytest.approx(3 / 16)  # o→i, u→v, r→e
    assert cer(say(silent(), 3, "<speak>Sure,<speak>its<speak>four.")) == pytest.approx(1 / 16)  # one deletion
    words = say(silent(), 3, "<speak>Sure,<delegate>2+2</delegate><speak>it's<speak>four.")
    assert cer(words) == 0.0  # the request is not spoken
    assert cer(silent()) == 1.0  # saying nothing deletes every character
    assert cer(say(silent(), 3, "<speak>Sure,it's<speak>four.")) == pytest.approx(1 / 16)  # a missing word break
    assert behaviour.character_error_rate(reference, silent()) is None  # nothing to say: no CER


def _levenshtein(a: str, b: str) -> int:  # the textbook recurrence, as the control
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def test_nearest_lines_distance_is_the_minimum_over_every_reference_the_lines_allow():
    """Against brute force over every combination of choices (random small cases): the fewest edits and,
    of the references that tie, the longest."""
    rng = np.random.default_rng(0)
    word = lambda n: "".join(rng.choice(list("abc"), n))
    for _ in range(200):
        a, b = word(rng.integers(0, 8)), word(rng.integers(0, 8))
        assert behaviour.edit_distance(a, b) == _levenshtein(a, b)
        lines = [[word(rng.integers(0, 4)) for _ in range(rng.integers(1, 4))] for _ in range(rng.integers(1, 4))]
        hypothesis = "".join(rng.choice(list("ab c"), rng.integers(0, 10)))
        references = {" ".join(c for c in combo if c) for combo in itertools.product(*lines)}
        best = min((_levenshtein(hypothesis, r), -len(r)) for r in references)
        assert behaviour.nearest_lines_distance(hypothesis, lines) == (best[0], -best[1]), (hypothesis, lines)


def test_words_cer_scores_against_the_nearest_line_the_data_could_draw():
    """A reply the data draws at random from a few lines is scored against the nearest of them: another
    line of the set is as right as the one drawn (CER 0), which `text_cer_drawn` counts as wrong; an
    optional line ("") may be said or left out; gibberish stays wrong either way."""
    reference = say(silent(), 3, "<speak>that<speak>is<speak>good<eot>")
    lines = [["that is good", "how nice"], ["okay", ""]]
    annotations = {"model_lines": [{"start": 0.6, "choices": lines[0]}, {"start": 2.0, "choices": lines[1]}]}
    scored = lambda text: behaviour.common(annotations, text, S, reference_text=reference)
    other = scored(say(silent(), 3, "<speak>how<speak>nice<eot>"))
    assert other["text_cer"] == 0.0 and other["text_cer_drawn"] == pytest.approx(10 / 12)
    assert scored(say(silent(), 3, "<speak>how<speak>nice<eot><speak>okay<eot>"))["text_cer"] == 0.0
    assert scored(say(silent(), 3, "<speak>how<speak>nicer<eot>"))["text_cer"] == pytest.approx(1 / 8)
    gibberish = scored(say(silent(), 3, "<speak>okahis<speak>oh<eot>"))
    assert gibberish["text_cer"] > 0.5 and gibberish["text_cer_drawn"] > 0.5
    assert scored(silent())["text_cer"] == 1.0
    assert behaviour.common({}, reference, S, reference_text=reference)["text_cer"] == 0.0  # no lines: as drawn


def test_gates_are_checked_against_the_aggregates():
    row = report.ScenarioRow(
        "turn_taking",
        2,
        {"reply_on_time": {"mean": 0.95, "n": 2}, "reply_missed": {"mean": 0.10, "n": 2}},
        {"reply_on_time": {"mean": 1.0, "n": 2}, "reply_missed": {"mean": 0.0, "n": 2}},
        (),
    )
    episodes = [
        report.EpisodeResult("turn_taking", k, k, {"text_cer": cer}, {"text_cer": 0.0}, {}, ({"text_cer": cer},))
        for k, cer in enumerate((0.2, 0.5))
    ]
    gates = (
        report.Gate("turn_taking", "reply_on_time", "on time", ">=", 0.9),
        report.Gate("turn_taking", "reply_missed", "missed", "<=", 0.05),
        report.Gate(report.ALL, "text_cer", "CER", "<=", 0.30),
        report.Gate("delegate", "delegate_hit", "not evaluated", ">=", 0.8),
    )
    results = report.check_gates(gates, [row], episodes)
    assert [(r.gate.key, r.value, r.data, r.met, r.n) for r in results] == [
        ("reply_on_time", 0.95, 1.0, True, 2),
        ("reply_missed", 0.10, 0.0, False, 2),
        ("text_cer", pytest.approx(0.35), 0.0, False, 2),
    ]
    table = report.format_gates(results)
    assert "| turn_taking | on time | >= 90% | 95% | 2 | 100% | met |" in table
    assert "| all | CER | <= 30% | 35% | 2 | 0% | **not met** |" in table and "1 of 3 gates met." in table


# ----------------------------------------------------------------------------------------------
# Rollouts


def test_eval_episodes_are_heldout_and_a_function_of_scenario_and_k(clips, episode):
    again = report.eval_episode(CFG, "cue_speak", 0, clips)
    assert again.seed == episode.seed and episode.seed % 2 == 1 and episode.split == "heldout"
    np.testing.assert_array_equal(again.user_audio, episode.user_audio)
    seeds = {report.eval_episode(CFG, s, k, clips).seed for s in ("cue_speak", "turn_taking") for k in (0, 1)}
    assert len(seeds) == 4
    other = config_lib.override(CFG, ["data.seed=1"])
    assert report.eval_episode(other, "cue_speak", 0, clips).seed != episode.seed


def test_rollout_shapes_and_determinism(params, episode):
    a = rollout(CFG, params, episode, rng_seed=0)
    b = rollout(CFG, params, episode, rng_seed=0)
    frames = S.audio_slots * S.stack
    assert a.text.shape == (N, S.text_out_slots) and a.text.dtype == np.int32
    assert a.mel.shape == (N, frames, S.n_mels) and a.levels.shape == (N, frames, S.n_mels)
    np.testing.assert_array_equal(a.levels, stream.quantize_dmel(a.mel, S))
    np.testing.assert_array_equal(a.text, b.text)
    np.testing.assert_array_equal(a.mel, b.mel)
    c = rollout(CFG, params, episode, rng_seed=1)
    assert not np.array_equal(a.mel, c.mel)  # mel is sampled: another seed, other audio
    payloads, _ = render.chunk_payloads(episode, S)
    np.testing.assert_array_equal(a.reference_text, np.stack([p.text_out for p in payloads]))
    np.testing.assert_array_equal(a.text_in, np.stack([p.text_in for p in payloads]))
    assert a.energy.shape == (N,) and a.text_onset.shape == (N,)
    assert (a.reference_energy == S.dmel_min).sum() > N // 2  # the data's model is silent most of the time
    assert cache_capacity(S, N) == stream.chunk_start(S, N)


def test_rollout_feeds_the_episode_stream(params, episode):
    """Chunks 0 (a frame chunk) and 1 of the rollout are what microturn gives on the episode's own input,
    sampling with the session's key of each chunk."""
    ro = rollout(CFG, params, episode, rng_seed=3)
    payloads, _ = render.chunk_payloads(episode, S)
    fn = step.jit_microturn(CFG)
    kv = cache.init_cache(CFG.model, 1, stream.window_length(S, N))
    sampling = step.Sampling.from_config(CFG)
    base = jax.random.key(3)
    blocks = []
    for k in (0, 1):
        p = payloads[k]
        patches = stream.patchify(p.frame) if p.frame is not None else np.zeros((S.patches_per_frame, 40, 40, 3))
        block = {
            "audio": p.audio_in[None],
            "text": p.text_in[None].astype(np.int32),
            "patches": patches[None].astype(np.uint8),
            "active": np.array([True]),
        }
        blocks.append(block)
        out, kv = fn(params, kv, block, jax.random.fold_in(base, k)[None], sampling)
        np.testing.assert_array_equal(np.asarray(out["text"][0]), ro.text[k])
        np.testing.assert_allclose(np.asarray(out["mel"][0]).reshape(ro.mel[k].shape), ro.mel[k], rtol=1e-5, atol=1e-5)
    # control: the same call on other input gives other output, so the comparison above can fail
    kv = cache.init_cache(CFG.model, 1, stream.window_length(S, N))
    other = blocks[0] | {"audio": np.full_like(blocks[0]["audio"], S.dmel_levels - 1)}
    out, _ = fn(params, kv, other, jax.random.fold_in(base, 0)[None], sampling)
    assert not np.allclose(np.asarray(out["mel"][0]).reshape(ro.mel[0].shape), ro.mel[0], atol=1e-3)


def test_vocode_is_episode_length_and_silence_is_silent():
    mel = np.full((3, S.audio_slots * S.stack, S.n_mels), S.dmel_min, np.float32)
    wave = vocode(mel, S, 3 * 3200)
    assert wave.shape == (3 * 3200,) and not wave.any()
    loud = vocode(mel + 6.0, S, 3 * 3200 + 7)
    assert loud.shape == (3 * 3200 + 7,) and np.abs(loud[:3200]).max() > 1e-3 and not loud[-7:].any()


def test_evaluate_writes_every_artefact(tmp_path, params, clips):
    names = ("turn_taking", "cue_speak")
    rep = evaluate(
        CFG, params, tmp_path, episodes_per_scenario=1, rollout_seeds=2, scenarios=names, clips=clips, progress=False
    )
    assert [r.scenario for r in rep.rows] == list(names) and all(r.episodes == 1 and r.seeds == 2 for r in rep.rows)
    for name in names:
        folder = tmp_path / name / "0"
        ep = report.eval_episode(CFG, name, 0, clips)
        model, rate = wav.read_wav(folder / "model.wav")
        assert rate == S.sample_rate and model.shape == ep.user_audio.shape
        dialogue, _ = wav.read_wav(folder / "dialogue.wav")
        assert dialogue.shape == (ep.user_audio.size, 2)
        np.testing.assert_allclose(dialogue[:, 0], ep.user_audio, atol=1 / 32768)
        np.testing.assert_array_equal(dialogue[:, 1], model)
        assert (folder / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        saved = json.loads((folder / "episode.json").read_text())
        assert saved["seed"] == ep.seed and saved["annotations"] == json.loads(json.dumps(ep.annotations))
        assert len(saved["chunks"]) == N

        # the saved metrics are those of this episode's rollouts, one per rollout seed (each its own sample)
        def scored(ro, name=name, ep=ep):
            return behaviour.episode_metrics(
                name,
                ep.annotations,
                ro.text,
                S,
                reference_text=ro.reference_text,
                energy=ro.energy,
                reference_energy=ro.reference_energy,
            )

        ro = rollout(CFG, params, ep, rng_seed=report.eval_index(name, 0))
        expected = scored(ro)
        assert saved["metrics"] == pytest.approx(expected)
        second = scored(rollout(CFG, params, ep, rng_seed=report.rollout_seed(name, 0, 1)))
        assert saved["seed_metrics"] == [pytest.approx(expected), pytest.approx(second)]
        assert [c["text_out"] for c in saved["chunks"]] == [tokenizer.decode([int(t) for t in row]) for row in ro.text]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["scenario"] for r in summary["rows"]] == list(names)
    for row in summary["rows"]:
        keys = {c.key for c in (*scenarios.get(row["scenario"]).columns, *report.COMMON_COLUMNS)}
        assert keys <= set(row["metrics"]) and keys <= set(row["reference"])
        assert len(row["cells"]) == len(keys)
    assert summary["rollout_seeds"] == 2 and "speaks when p(not PAD) > 0.5" in summary["sampling"]
    assert {g["scenario"] for g in summary["gates"]} == {"turn_taking", "cue_speak", report.ALL}
    assert (
        "## Gates" in (tmp_path / "summary.md").read_text()
        and rep.gate_table() in (tmp_path / "summary.md").read_text()
    )
    turn = summary["rows"][0]
    assert len(turn["per_seed"]) == 2
    assert turn["reference"]["reply_on_time"]["mean"] == 1.0 and turn["reference"]["text_agreement"]["mean"] == 1.0
    table = rep.table()
    assert table == (tmp_path / "summary.md").read_text().split("\n\n")[2]
    assert table.count("\n") == 1 + len(names) and "| turn_taking | 1 |" in table
    assert "reply onset" in table and "cue → onset" in table and "(data: 100%)" in table
    assert rep.summary_json == tmp_path / "summary.json" and rep.out_dir == tmp_path
