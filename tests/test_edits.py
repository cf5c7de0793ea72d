"""Counterfactual edits of held-out episodes (`probing.edits`): each does to the signal what it says, keeps
the rest bit-identical, moves the annotations and markers with it, and leaves the episode's own reference
output scoring as the data does. Controls show the checks catch a wrong edit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from interaction_jax import tokenizer
from interaction_jax.audio import activity, features
from interaction_jax.audio.voices import Voice
from interaction_jax.config import preset
from interaction_jax.data import corpus, pipeline, render, scenarios
from interaction_jax.data.episode import check_episode
from interaction_jax.data.scenarios.common import FADE_S, beep, nearest_chunk
from interaction_jax.data.scenarios.scoring import last_chunk
from interaction_jax.eval.report import due_markers, eval_episode
from interaction_jax.probing import edits
from interaction_jax.probing.edits.timeline import Draft
from interaction_jax.stream import chunk_samples
from interaction_jax.video.scene import CUE_RED

EPISODES = 8  # held-out episodes per scenario the tests pick from


@pytest.fixture(scope="module")
def world():
    cfg = preset("tiny")
    clips = pipeline.clip_source(cfg, progress=False)
    names = ("turn_taking", "interruption", "cue_speak", "time_speak", "backchannel")
    episodes = {name: [eval_episode(cfg, name, k, clips) for k in range(EPISODES)] for name in names}
    return cfg.stream, clips, episodes


def pick(world, name, accept):
    """The first held-out episode of `name` that `accept`s."""
    for ep in world[2][name]:
        if accept(ep):
            return ep
    pytest.fail(f"no held-out {name} episode among the first {EPISODES} fits this test")


def spoken_timer_request_with_a_pause(world):
    """A time_speak episode whose first request is spoken, with a pause in it."""
    return pick(
        world,
        "time_speak",
        lambda e: not e.annotations["requests"][0]["typed"] and e.annotations["user_utterances"][0]["pauses"],
    )


def reference_metrics(ep, s):
    """The scenario's metrics of the episode's own reference output (as `eval/rollout.py` reads it)."""
    payloads, _ = render.chunk_payloads(ep, s)
    return scenarios.get(ep.scenario).metrics(ep.annotations, np.stack([p.text_out for p in payloads]), s)


def energy(audio, s):
    """float32 [num_chunks]: mean log10-mel per chunk (`audio.activity.chunk_energy`)."""
    return activity.chunk_energy(features.log_mel(audio, s).reshape(-1, features.frames_per_chunk(s), s.n_mels), s)


def floor(ep, s):
    return Draft(ep, s, "test").floor


def quiet(ep, s):
    """bool [num_chunks]: the user's chunk energy is the noise floor's (speech is ≥ 0.3 above it; the floor
    itself is above `activity.audio_active`'s threshold, which is for the model's synthesised audio)."""
    return np.abs(energy(ep.user_audio, s) - energy(floor(ep, s), s)) < 0.05


def samples(t, s):
    return round(t * s.sample_rate)


def moved_by(old, new, point, delta):
    """Whether `new`'s audio after `point` is `old`'s, `delta` samples later (speech resumes exactly then)."""
    n = old.size
    return np.array_equal(new[point + delta :], old[point : n - delta])


def marker_times(ep, s, label):
    return [t for t, name in due_markers(ep.scenario, ep.annotations, s) if name.startswith(label)]


def times_of(events, token):
    return [e.time_s for e in events if e.tokens[0] == token]


# ----------------------------------------------------------------------------------------------
# Shared machinery


def test_a_draft_built_unedited_is_the_episode_and_its_floor_the_episodes_own(world):
    s = world[0]
    for name in ("turn_taking", "cue_speak", "time_speak", "backchannel"):
        ep = world[2][name][0]
        d = Draft(ep, s, "test")
        rebuilt = d.build()
        assert np.array_equal(rebuilt.user_audio, ep.user_audio) and np.array_equal(rebuilt.model_audio, ep.model_audio)
        assert rebuilt.user_text == ep.user_text and rebuilt.model_text == ep.model_text
        assert rebuilt.annotations == ep.annotations
        quiet = np.ones(d.total, bool)
        for a, b in [*ep.annotations["user_speech"], *d.beeps()]:
            quiet[samples(a, s) : samples(b, s)] = False
        assert np.array_equal(ep.user_audio[quiet], d.floor[quiet]), name  # the builder's noise, regenerated


# ----------------------------------------------------------------------------------------------
# stretch_pause


def _room_after(ep, s, seconds):
    ends = [b for _, b in ep.annotations["model_speech"] + ep.annotations["user_speech"]]
    return max(ends) + seconds <= ep.num_chunks * s.chunk_ms / 1000


def test_stretch_pause_lengthens_the_pause_and_moves_what_follows(world):
    s = world[0]
    ep = pick(world, "turn_taking", lambda e: e.annotations["user_utterances"][0]["pauses"] and _room_after(e, s, 1))
    seconds, chunks = 0.6, 3
    delta = chunks * chunk_samples(s)
    new = edits.stretch_pause(ep, s, seconds)
    check_episode(new, s)
    (ps, pe), (nps, npe) = (
        ep.annotations["user_utterances"][0]["pauses"][0],
        new.annotations["user_utterances"][0]["pauses"][0],
    )
    point = samples(ps, s)
    assert nps == ps and npe == pytest.approx(pe + seconds)
    assert new.annotations["user_utterances"][0]["end"] == pytest.approx(
        ep.annotations["user_utterances"][0]["end"] + seconds
    )
    old_reply, new_reply = ep.annotations["replies"][0], new.annotations["replies"][0]
    assert new_reply["onset_chunk"] == old_reply["onset_chunk"] + chunks
    assert new_reply["user_end"] == pytest.approx(old_reply["user_end"] + seconds)
    assert marker_times(new, s, "reply due")[0] == pytest.approx(marker_times(ep, s, "reply due")[0] + seconds)
    # The signal: unedited before the pause, the floor (silent) in the longer pause, the rest 0.6 s later.
    assert np.array_equal(new.user_audio[:point], ep.user_audio[:point])
    assert np.array_equal(new.user_audio[point : point + delta], floor(ep, s)[point : point + delta])
    assert moved_by(ep.user_audio, new.user_audio, point, delta)
    assert moved_by(ep.model_audio, new.model_audio, point, delta)
    c = s.chunk_ms / 1000
    inside = list(range(int(np.ceil(nps / c)), int(npe / c)))  # the chunks wholly inside the new pause
    assert len(inside) >= chunks and quiet(new, s)[inside].all()
    assert not quiet(new, s)[int(npe / c) + 1]  # the speech after the pause
    after_old, after_new = energy(ep.user_audio, s)[int(pe / c) + 1 :], energy(new.user_audio, s)[int(npe / c) + 1 :]
    assert np.array_equal(after_new, after_old[: after_new.size])
    assert times_of(new.model_text, tokenizer.SPEAK) == pytest.approx(
        [t + seconds for t in times_of(ep.model_text, tokenizer.SPEAK)]
    )
    # The reference still answers on time and never in the pause.
    metrics = reference_metrics(new, s)
    assert metrics["reply_on_time"] == 1.0 and metrics["pause_false_start"] == 0.0
    assert metrics == pytest.approx(reference_metrics(ep, s))
    # Control: a stretch by another amount fails the "exactly 0.6 s later" check.
    wrong = edits.stretch_pause(ep, s, seconds + 0.2)
    assert not moved_by(ep.user_audio, wrong.user_audio, point, delta)


def test_stretch_pause_shortens_in_whole_chunks_and_pads_the_end_with_the_floor(world):
    s = world[0]
    ep = pick(
        world, "turn_taking", lambda e: any(b - a > 0.45 for a, b in e.annotations["user_utterances"][0]["pauses"])
    )
    which = next(i for i, (a, b) in enumerate(ep.annotations["user_utterances"][0]["pauses"]) if b - a > 0.45)
    delta = 2 * chunk_samples(s)
    new = edits.stretch_pause(ep, s, -0.4, pause=which)
    assert edits.stretch_pause(ep, s, -0.35, pause=which).annotations == new.annotations  # rounds to 2 chunks
    ps, pe = ep.annotations["user_utterances"][0]["pauses"][which]
    point, n = samples(ps, s), ep.user_audio.size
    assert new.annotations["user_utterances"][0]["pauses"][which][1] == pytest.approx(pe - 0.4)
    assert np.array_equal(new.user_audio[:point], ep.user_audio[:point])
    assert np.array_equal(new.user_audio[point : n - delta], ep.user_audio[point + delta :])
    assert np.array_equal(new.user_audio[n - delta :], floor(ep, s)[n - delta :])
    assert new.annotations["replies"][0]["onset_chunk"] == ep.annotations["replies"][0]["onset_chunk"] - 2
    assert reference_metrics(new, s)["reply_on_time"] == 1.0
    assert edits.stretch_pause(ep, s, 0.05).annotations == ep.annotations  # under half a chunk: nothing moves


def test_stretch_pause_refuses_what_it_cannot_do(world):
    s = world[0]
    ep = pick(world, "turn_taking", lambda e: e.annotations["user_utterances"][0]["pauses"])
    u = ep.annotations["user_utterances"][0]
    with pytest.raises(ValueError, match="user utterance 9 is out of range"):
        edits.stretch_pause(ep, s, 0.4, utterance=9)
    with pytest.raises(ValueError, match="pause 5 is out of range"):
        edits.stretch_pause(ep, s, 0.4, pause=5)
    with pytest.raises(ValueError, match="leaves none"):
        edits.stretch_pause(ep, s, -(u["pauses"][0][1] - u["pauses"][0][0]) - 0.2)
    with pytest.raises(ValueError, match=r"past the end of the episode; [0-9.]+ s \(whole chunks\) fit"):
        edits.stretch_pause(ep, s, 9.0)
    no_pause = pick(world, "turn_taking", lambda e: any(not v["pauses"] for v in e.annotations["user_utterances"]))
    index = next(i for i, v in enumerate(no_pause.annotations["user_utterances"]) if not v["pauses"])
    with pytest.raises(ValueError, match="has no pauses"):
        edits.stretch_pause(no_pause, s, 0.4, utterance=index)
    visual = pick(
        world,
        "cue_speak",
        lambda e: e.annotations["cues"][0]["kind"] == "visual" and e.annotations["user_utterances"][0]["pauses"],
    )
    with pytest.raises(ValueError, match=r"visual cue .* the video cannot move"):
        edits.stretch_pause(visual, s, 0.4)


# ----------------------------------------------------------------------------------------------
# cut_user_off


def test_cut_user_off_ends_the_utterance_and_the_reply_follows_by_the_reply_rule(world):
    s = world[0]
    ep = pick(world, "turn_taking", lambda e: e.annotations["user_utterances"][0]["pauses"])
    u = ep.annotations["user_utterances"][0]
    last = [sp for sp in ep.annotations["user_speech"] if u["start"] <= sp[0] and sp[1] <= u["end"]][-1]
    at_s = round((last[0] + last[1]) / 2, 3)  # inside the last voiced stretch
    cut, end, fade = samples(at_s, s), samples(u["end"], s), round(FADE_S * s.sample_rate)
    new = edits.cut_user_off(ep, s, at_s)
    nu = new.annotations["user_utterances"][0]
    assert nu["end"] == at_s and nu["pauses"] == u["pauses"] and nu["text"] == u["text"]
    assert [sp for sp in new.annotations["user_speech"] if sp[0] >= u["start"] and sp[1] <= at_s][-1] == [last[0], at_s]
    # The signal: unedited up to the fade, fading to the floor at the cut, the floor after it.
    assert np.array_equal(new.user_audio[: cut - fade], ep.user_audio[: cut - fade])
    speech = lambda e: np.abs(e.user_audio[cut - fade : cut] - floor(ep, s)[cut - fade : cut])
    assert (speech(new) <= speech(ep) + 1e-6).all() and speech(new)[-1] < 1e-3
    assert np.array_equal(new.user_audio[cut:end], floor(ep, s)[cut:end])
    gone = slice(cut // chunk_samples(s) + 1, end // chunk_samples(s))
    assert quiet(new, s)[gone].all() and not quiet(ep, s)[gone].all()
    # The reply: the same delay r after the new last chunk, its audio moved along whole.
    old_onset = ep.annotations["replies"][0]["onset_chunk"]
    r = old_onset - last_chunk(end, s) - 1
    onset = last_chunk(cut, s) + 1 + r
    assert new.annotations["replies"][0] == {"user_end": at_s, "onset_chunk": onset}
    S = chunk_samples(s)
    reply = ep.model_audio[old_onset * S : samples(ep.annotations["model_utterances"][0]["end"], s)]
    assert np.array_equal(new.model_audio[onset * S : onset * S + reply.size], reply)
    assert marker_times(new, s, "reply due") == pytest.approx([onset * S / s.sample_rate])
    metrics = reference_metrics(new, s)
    assert metrics["reply_on_time"] == 1.0 and metrics["reply_latency_chunks"] == 1 + r
    # Control: the user cut off but the reply left where it was scores as late or missed.
    assert old_onset - onset >= 2  # (the cut is far enough from the end for the reply to move)
    stale = dataclasses.replace(new, model_audio=ep.model_audio, model_text=ep.model_text)
    assert reference_metrics(stale, s)["reply_on_time"] == 0.0


def test_cut_user_off_in_a_pause_ends_where_the_pause_starts(world):
    s = world[0]
    ep = pick(world, "turn_taking", lambda e: e.annotations["user_utterances"][0]["pauses"])
    ps, pe = ep.annotations["user_utterances"][0]["pauses"][-1]
    new = edits.cut_user_off(ep, s, (ps + pe) / 2)
    u = new.annotations["user_utterances"][0]
    assert u["end"] == ps and u["pauses"] == ep.annotations["user_utterances"][0]["pauses"][:-1]
    assert new.annotations["replies"][0]["user_end"] == ps
    assert reference_metrics(new, s)["reply_on_time"] == 1.0


def test_cut_user_off_refuses_what_it_cannot_do(world):
    s = world[0]
    ep = world[2]["turn_taking"][0]
    u = ep.annotations["user_utterances"][0]
    with pytest.raises(ValueError, match="not inside user utterance 0"):
        edits.cut_user_off(ep, s, u["end"] + 0.1)
    with pytest.raises(ValueError, match="user utterance 7 is out of range"):
        edits.cut_user_off(ep, s, 1.0, utterance=7)
    with pytest.raises(ValueError, match=r"cut_user_off: time_speak episode \d+: it has no replies"):
        edits.cut_user_off(world[2]["time_speak"][0], s, 1.0)


# ----------------------------------------------------------------------------------------------
# insert_barge_in


def _barge_in_fits(ep, s):
    m = ep.annotations["model_utterances"][0]
    later = [u["start"] for u in ep.annotations["user_utterances"] if u["start"] > m["start"]]
    return m["end"] - m["start"] > 1.0 and (not later or later[0] > m["start"] + 2.5)


def test_insert_barge_in_cuts_the_model_at_the_end_of_its_chunk(world):
    s, clips, _ = world
    ep = pick(world, "turn_taking", lambda e: _barge_in_fits(e, s))
    m = ep.annotations["model_utterances"][0]
    at_s = round(m["start"] + 0.5, 3)
    new = edits.insert_barge_in(ep, s, at_s, clips)
    S, start = chunk_samples(s), samples(at_s, s)
    clip = clips.get(edits.default_interjection("heldout"), Voice.from_name(ep.annotations["user_voice"]))
    assert clip.text == "one second please"
    end = start + clip.audio.size
    # The user: the clip over the floor from at_s, the rest untouched.
    assert np.array_equal(new.user_audio[start:end], np.clip(ep.user_audio[start:end] + clip.audio, -1, 1))
    assert np.array_equal(new.user_audio[:start], ep.user_audio[:start])
    assert np.array_equal(new.user_audio[end:], ep.user_audio[end:])
    assert [start / s.sample_rate, end / s.sample_rate] in new.annotations["user_speech"]
    # The model: yields at the end of the barge-in's chunk, with a fade, the words begun, then EOT.
    cut_chunk = start // S
    cut = (cut_chunk + 1) * S
    assert new.annotations["barge_in"] == at_s
    assert (new.annotations["cut"], new.annotations["cut_chunk"]) == (cut / s.sample_rate, cut_chunk)
    fade = round(FADE_S * s.sample_rate)
    assert np.array_equal(new.model_audio[: cut - fade], ep.model_audio[: cut - fade])
    assert new.model_audio[cut - 1] == 0.0 and ep.model_audio[cut - 1] != 0.0  # faded out to the cut
    assert not new.model_audio[cut : samples(m["end"], s)].any()
    nm = new.annotations["model_utterances"][0]
    assert nm["end"] == cut / s.sample_rate and nm["cut"]
    said = [e for e in new.model_text if m["start"] <= e.time_s <= m["end"]]
    assert said[-1].tokens == (tokenizer.EOT,) and said[-1].time_s == cut / s.sample_rate
    assert all(e.time_s < cut / s.sample_rate for e in said[:-1])
    words = len(tokenizer.spoken_text([t for e in said for t in e.tokens]).split())
    assert all(len(c.split()) <= words for c in new.annotations["model_lines"][0]["choices"])
    # Markers: the scenario's own, plus interruption's barge-in and cut.
    assert due_markers(new.scenario, new.annotations, s) == due_markers(ep.scenario, ep.annotations, s)
    assert {(at_s, "barge-in"), (cut / s.sample_rate, "cut")} <= set(edits.markers(new, s))
    # Scored: turn taking as before; as an interruption, the reference talks at the barge-in and yields.
    assert reference_metrics(new, s) == reference_metrics(ep, s)
    payloads, _ = render.chunk_payloads(new, s)
    yielding = scenarios.get("interruption").metrics(new.annotations, np.stack([p.text_out for p in payloads]), s)
    assert yielding["talking_at_barge_in"] == 1.0 and yielding["yielded"] == 1.0
    # Control: the barge-in without the cut (the model talks on) does not yield within the chunk.
    talking_on = dataclasses.replace(new, model_audio=ep.model_audio, model_text=ep.model_text)
    payloads, _ = render.chunk_payloads(talking_on, s)
    on = scenarios.get("interruption").metrics(new.annotations, np.stack([p.text_out for p in payloads]), s)
    assert on["stop_latency_chunks"] > 0


def test_insert_barge_in_while_the_model_is_silent_cuts_nothing(world):
    s, clips, _ = world
    ep = pick(world, "turn_taking", lambda e: len(e.annotations["replies"]) == 1)
    at_s = ep.annotations["model_utterances"][-1]["end"] + 0.3
    new = edits.insert_barge_in(ep, s, at_s, clips, text="wait, go back a bit")
    assert new.annotations["barge_in"] == at_s and "cut" not in new.annotations
    assert new.annotations["user_utterances"][-1]["text"] == "wait, go back a bit"
    assert np.array_equal(new.model_audio, ep.model_audio) and new.model_text == ep.model_text
    assert not quiet(new, s)[round(at_s * 1000) // s.chunk_ms + 1]


def test_insert_barge_in_refuses_what_it_cannot_do(world):
    s, clips, episodes = world
    ep = pick(world, "turn_taking", lambda e: len(e.annotations["replies"]) == 2)
    u = ep.annotations["user_utterances"][0]
    with pytest.raises(ValueError, match="already has a barge-in"):
        edits.insert_barge_in(episodes["interruption"][0], s, 1.0, clips)
    with pytest.raises(ValueError, match="overlaps user speech"):
        edits.insert_barge_in(ep, s, u["start"] + 0.1, clips)
    with pytest.raises(ValueError, match="does not fit"):
        edits.insert_barge_in(ep, s, 9.8, clips)
    with pytest.raises(ValueError, match="while the barge-in is still going"):  # the reply starts during it
        edits.insert_barge_in(ep, s, u["end"] + 0.01, clips)


# ----------------------------------------------------------------------------------------------
# move_cue


def test_move_cue_moves_the_beep_and_the_response(world):
    s = world[0]
    ep = pick(world, "cue_speak", lambda e: e.annotations["cues"][0]["kind"] == "audio")
    cue = ep.annotations["cues"][0]
    seconds = -1.0
    new = edits.move_cue(ep, s, seconds)
    tone, S, old = beep(s.sample_rate), chunk_samples(s), samples(cue["time"], s)
    lo = old + samples(seconds, s)
    nc = new.annotations["cues"][0]
    assert nc["time"] == lo / s.sample_rate and nc["ack_end"] == cue["ack_end"]
    assert nc["perceived_chunk"] == last_chunk(lo + tone.size, s) and nc["onset_chunk"] == nc["perceived_chunk"] + 1
    # The beep is heard at its new time over the floor; where it was is the floor.
    assert np.array_equal(new.user_audio[lo : lo + tone.size], np.clip(floor(ep, s)[lo : lo + tone.size] + tone, -1, 1))
    assert np.array_equal(new.user_audio[old : old + tone.size], floor(ep, s)[old : old + tone.size])
    assert np.array_equal(new.user_audio[:lo], ep.user_audio[:lo])
    # The response moved as many chunks as the onset; the acknowledgement did not move.
    d = nc["onset_chunk"] - cue["onset_chunk"]
    resp = ep.model_audio[cue["onset_chunk"] * S :]
    assert np.array_equal(new.model_audio[nc["onset_chunk"] * S :][: resp.size + d * S], resp[: resp.size + d * S])
    ack_end = samples(cue["ack_end"], s)
    assert np.array_equal(new.model_audio[:ack_end], ep.model_audio[:ack_end])
    assert [t for t, name in edits.markers(new, s) if name == "audio cue"] == [nc["time"]]
    metrics = reference_metrics(new, s)
    assert metrics["cue_hit"] == 1.0 and metrics["cue_premature"] == 0.0
    # Control: the beep moved earlier but the response left where it was misses the cue.
    stale = dataclasses.replace(new, model_audio=ep.model_audio, model_text=ep.model_text)
    assert reference_metrics(stale, s)["cue_hit"] == 0.0


def test_move_cue_re_renders_the_red_square_at_another_frame(world):
    s = world[0]
    ep = pick(world, "cue_speak", lambda e: e.annotations["cues"][0]["kind"] == "visual")
    cue = ep.annotations["cues"][0]
    red = lambda e: [i for i, f in enumerate(e.frames) if (f == CUE_RED).all(axis=-1).any()]
    new = edits.move_cue(ep, s, -0.9)  # one frame interval (1 s at 5 chunks of 200 ms), rounded
    frame_s = s.video_every * s.chunk_ms / 1000
    nc = new.annotations["cues"][0]
    assert nc["time"] == cue["time"] - frame_s
    assert (nc["perceived_chunk"], nc["onset_chunk"]) == (
        cue["perceived_chunk"] - s.video_every,
        cue["onset_chunk"] - s.video_every,
    )
    assert red(new) == [i - 1 for i in red(ep)] and len(red(ep)) == 2
    untouched = [i for i in range(len(ep.frames)) if i not in red(ep) + red(new)]
    assert all(np.array_equal(new.frames[i], ep.frames[i]) for i in untouched)
    assert np.array_equal(new.user_audio, ep.user_audio)
    assert reference_metrics(new, s)["cue_hit"] == 1.0
    assert np.array_equal(edits.move_cue(ep, s, 0.4).frames, ep.frames)  # under half a frame interval


def test_move_cue_refuses_what_it_cannot_do(world):
    s, _, episodes = world
    ep = pick(world, "cue_speak", lambda e: e.annotations["cues"][0]["kind"] == "audio")
    with pytest.raises(ValueError, match="a chunk after the ack"):
        edits.move_cue(ep, s, -5.0)
    with pytest.raises(ValueError, match=r"not over by 10\.000 s"):
        edits.move_cue(ep, s, 3.0)
    with pytest.raises(ValueError, match="cue 3 is out of range"):
        edits.move_cue(ep, s, 0.5, cue=3)
    with pytest.raises(ValueError, match=r"move_cue: turn_taking episode \d+: it has no cues"):
        edits.move_cue(episodes["turn_taking"][0], s, 0.5)


# ----------------------------------------------------------------------------------------------
# change_requested_time


def _same(a, b):
    return (
        np.array_equal(a.user_audio, b.user_audio)
        and np.array_equal(a.model_audio, b.model_audio)
        and a.user_text == b.user_text
        and a.model_text == b.model_text
        and a.annotations == b.annotations
    )


def test_change_requested_time_respeaks_the_request_and_moves_the_response(world):
    s, clips, _ = world
    ep = spoken_timer_request_with_a_pause(world)
    r, u = ep.annotations["requests"][0], ep.annotations["user_utterances"][0]
    assert _same(edits.change_requested_time(ep, s, r["n"], clips), ep)  # the same N: the same episode
    n = 2 if r["n"] != 2 else 3
    new = edits.change_requested_time(ep, s, n, clips)
    nr, nu = new.annotations["requests"][0], new.annotations["user_utterances"][0]
    assert nu["text"] == u["text"].replace(str(r["n"]), str(n)) and nr["n"] == n
    clip = clips.get(nu["text"], Voice.from_name(ep.annotations["user_voice"]))
    # The new sentence's clip from the same start, its pause as long, over the floor.
    start, new_end = samples(u["start"], s), samples(nr["request_end"], s)
    (ps, pe), (nps, npe) = u["pauses"][0], nu["pauses"][0]
    assert npe - nps == pytest.approx(pe - ps) and new_end - start == clip.audio.size + samples(pe - ps, s)
    first = samples(nps, s) - start
    spoken = new.user_audio[start : start + first] - floor(ep, s)[start : start + first]
    fade = round(FADE_S * s.sample_rate)
    assert np.allclose(spoken[:-fade], clip.audio[: first - fade], atol=1e-6)
    assert np.array_equal(new.user_audio[:start], ep.user_audio[:start])
    assert np.array_equal(new.user_audio[new_end:], floor(ep, s)[new_end:])
    # The timer restarts at the new end; the response at the chunk nearest end + N.
    assert nr["target_time"] == pytest.approx(nr["request_end"] + n)
    assert nr["onset_chunk"] == nearest_chunk(nr["target_time"], s)
    assert [t for t, name in edits.markers(new, s) if name.startswith("target")] == [nr["target_time"]]
    S = chunk_samples(s)
    response = ep.model_audio[r["onset_chunk"] * S :][: samples(2.0, s)]
    response = response[: np.flatnonzero(response)[-1] + 1]
    assert np.array_equal(new.model_audio[nr["onset_chunk"] * S :][: response.size], response)
    metrics = reference_metrics(new, s)
    assert metrics["timer_hit"] == 1.0 and metrics["timer_abs_error_s"] <= s.chunk_ms / 2000
    # Control: the request changed but the response left at the old time misses the new target.
    stale = dataclasses.replace(new, model_audio=ep.model_audio, model_text=ep.model_text)
    assert reference_metrics(stale, s)["timer_hit"] == 0.0


def test_change_requested_time_retypes_a_typed_request(world):
    s, clips, _ = world
    ep = pick(world, "time_speak", lambda e: e.annotations["requests"][0]["typed"])
    r = ep.annotations["requests"][0]
    n = 6 if r["n"] != 6 else 3
    new = edits.change_requested_time(ep, s, n, clips)
    assert np.array_equal(new.user_audio, ep.user_audio)
    typed = [tokenizer.decode(e.tokens) for e in new.user_text]
    assert typed == [ep.annotations["user_utterances"][0]["text"].replace(str(r["n"]), str(n))]
    nr = new.annotations["requests"][0]
    assert nr["request_end"] == r["request_end"] and nr["target_time"] == pytest.approx(r["target_time"] + n - r["n"])
    assert nr["onset_chunk"] == r["onset_chunk"] + round((n - r["n"]) * 1000 / s.chunk_ms)
    assert reference_metrics(new, s)["timer_hit"] == 1.0


def test_change_requested_time_refuses_what_it_cannot_do(world):
    s, clips, episodes = world
    ep = episodes["time_speak"][0]
    with pytest.raises(ValueError, match=r"seconds=7: requests ask for one of \(2, 3, 4, 5, 6\)"):
        edits.change_requested_time(ep, s, 7, clips)
    with pytest.raises(ValueError, match="request 1 is out of range"):
        edits.change_requested_time(ep, s, 3, clips, request=1)
    with pytest.raises(ValueError, match="it has no timer requests"):
        edits.change_requested_time(episodes["cue_speak"][0], s, 3, clips)
    late = pick(world, "time_speak", lambda e: e.annotations["requests"][0]["request_end"] + 6.8 > 10)
    with pytest.raises(ValueError, match=r"after 6 s the response would not be over by 10\.000 s"):
        edits.change_requested_time(late, s, 6, clips)


def test_edits_compose(world):
    """Edits take edited episodes: a longer pause in a spoken timer request, then another time."""
    s, clips, _ = world
    ep = spoken_timer_request_with_a_pause(world)
    longer = edits.stretch_pause(ep, s, 0.4)
    assert longer.annotations["requests"][0]["request_end"] == pytest.approx(
        ep.annotations["requests"][0]["request_end"] + 0.4
    )
    new = edits.change_requested_time(longer, s, 3, clips)
    assert new.annotations["user_utterances"][0]["pauses"] == longer.annotations["user_utterances"][0]["pauses"]
    assert (
        reference_metrics(new, s)["timer_hit"] == 1.0
        and corpus.time_request_seconds(new.annotations["user_utterances"][0]["text"]) == 3
    )
