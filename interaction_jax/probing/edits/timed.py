"""Edits of what the model waits for: when a cue comes (cue_speak), how long a timer runs (time_speak)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.audio.clip import Clip
from interaction_jax.audio.voices import Voice
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus, scenarios
from interaction_jax.data.episode import SPLITS, ClipSource, Episode, frame_times
from interaction_jax.data.scenarios import cue_speak
from interaction_jax.data.scenarios.common import Layout, beep, nearest_chunk, scene_stream, text_arrival_chunk
from interaction_jax.data.scenarios.scoring import last_chunk
from interaction_jax.probing.edits.timeline import Draft, whole_chunks
from interaction_jax.stream import chunk_seconds
from interaction_jax.video import scene as video_scene


def _next_user_start(d: Draft, after_s: float) -> int:
    """The first sample of the next user utterance starting after `after_s`, or the episode's end."""
    return min((d.sample(u["start"]) for u in d.ann["user_utterances"] if u["start"] > after_s), default=d.total)


# ----------------------------------------------------------------------------------------------
# move_cue


def _cue_scene(d: Draft) -> video_scene.Scene:
    """The scene cue_speak rendered the episode's frames from: its scene stream regenerated from the seed,
    one red square per visual cue in order (`cue_speak._show_red_square`). Refused if it renders otherwise."""
    cfg, h, w = d.cfg, d.cfg.frame_height, d.cfg.frame_width
    rng = scene_stream(d.ep.seed, scenarios.get(d.ep.scenario).number)
    scene = video_scene.random_scene(rng, h, w)
    for cue in d.ann["cues"]:
        if cue["kind"] == "visual":
            scene = video_scene.with_cue(scene, cue["time"], rng, h, w, until_s=cue["time"] + _visible_s(d))
    if not np.array_equal(video_scene.render(scene, frame_times(cfg, d.ep.num_chunks), h, w), d.ep.frames):
        raise d.fail("its frames are not the scene cue_speak would render for it, so the square cannot be moved")
    return scene


def _visible_s(d: Draft) -> float:
    return cue_speak.CUE_VISIBLE_FRAMES * d.cfg.video_every * d.chunk / d.sr  # as `_show_red_square` computes it


def move_cue(ep: Episode, cfg: StreamConfig, seconds: float, cue: int = 0) -> Episode:
    """Move cue `cue` of a cue_speak episode by `seconds`: a visual cue by whole frame intervals (the red
    square appears at another frame time; the frames are re-rendered from the episode's scene, so only the
    frames that show or showed the square change), a beep by samples (it moves in the user's audio; where
    it was is the noise floor). `cues[cue]` gets the new time, perceived_chunk and onset_chunk, and the
    model's response moves along (the same number of chunks as the onset). Like the data, the cue must come
    a chunk after the acknowledgement ends at the earliest, and the response (and the square) must be over
    before the user's next utterance and the episode's end; ValueError otherwise.
    """
    d = Draft(ep, cfg, "move_cue")
    cues = d.require("cues", "cues (a cue_speak episode)")
    c = d.item(cues, cue, "cue")
    response = d.model_starting_at(c["onset_chunk"], "cue's response")
    if c["kind"] == "visual":
        every = cfg.video_every
        perceived = c["perceived_chunk"] + whole_chunks(seconds, every * chunk_seconds(cfg)) * every
        if not 0 <= perceived < ep.num_chunks:
            raise d.fail(f"a cue moved by {seconds} s would lie outside the episode")
        time_s = float(frame_times(cfg, ep.num_chunks)[perceived // every])
        lo, hi = perceived * d.chunk, d.sample(time_s + _visible_s(d))
    else:
        tone = beep(d.sr)
        lo = d.sample(c["time"]) + d.sample(seconds)
        hi = lo + tone.size
        perceived, time_s = last_chunk(hi, cfg), d.seconds(lo)
    onset = perceived + 1
    m = d.ann["model_utterances"][response]
    response_end = d.sample(m["end"]) + (onset - c["onset_chunk"]) * d.chunk
    earliest, latest = d.sample(c["ack_end"]) + d.chunk, _next_user_start(d, c["time"])
    if lo < earliest:
        raise d.fail(f"the cue at {time_s:.3f} s would come before {d.seconds(earliest):.3f} s, a chunk after the ack")
    if max(hi, response_end) > latest:
        raise d.fail(f"the cue at {time_s:.3f} s and the response are not over by {d.seconds(latest):.3f} s")
    if c["kind"] == "visual":
        scene = _cue_scene(d)
        j = [k for k in cues if k["kind"] == "visual"].index(c)
        appears = list(scene.appears)
        appears[j] = dataclasses.replace(appears[j], time_s=time_s, until_s=time_s + _visible_s(d))
        scene = dataclasses.replace(scene, appears=tuple(appears))
        d.frames = video_scene.render(scene, frame_times(cfg, ep.num_chunks), cfg.frame_height, cfg.frame_width)
    else:
        old = d.sample(c["time"])
        d.silence_user(old, old + tone.size)
        d.user[lo:hi] = np.clip(d.user[lo:hi] + tone, -1.0, 1.0)
    d.move_model({response: onset - c["onset_chunk"]})
    c.update(time=time_s, perceived_chunk=perceived, onset_chunk=onset)
    return d.build()


# ----------------------------------------------------------------------------------------------
# change_requested_time


def _gap_cuts(clip: Clip) -> list[int]:
    """Where `common.lay_out` cuts `clip` for a pause in each gap between timed words (the same formula)."""
    size = clip.audio.size
    return [
        min(max(round((a.end_s + b.start_s) / 2 * clip.sample_rate), 1), size - 1)
        for a, b in itertools.pairwise(clip.words)
    ]


def _relayout(d: Draft, u: dict, old: Clip, new: Clip) -> Layout:
    """`new` laid out as `old` was in utterance `u`: its pauses, as long, in the same gaps between words."""
    start = d.sample(u["start"])
    pauses = [(d.sample(a) - start, d.sample(b) - start) for a, b in u["pauses"]]
    if old.audio.size + sum(b - a for a, b in pauses) != d.sample(u["end"]) - start:
        raise d.fail(f"the request's audio is not {old.text!r} laid out with its pauses")
    old_gaps, new_gaps, cuts, gone = _gap_cuts(old), _gap_cuts(new), [], 0
    for a, b in pauses:
        if a - gone not in old_gaps or old_gaps.index(a - gone) >= len(new_gaps):
            at = d.seconds(start + a)
            raise d.fail(f"cannot find the request's pause at {at:.3f} s between the words of {new.text!r}")
        cuts.append(new_gaps[old_gaps.index(a - gone)])
        gone += b - a
    bounds = [0, *cuts, new.audio.size]
    pieces, offset = [], 0
    for (lo, hi), (a, b) in zip(itertools.pairwise(bounds), [(0, 0), *pauses], strict=True):
        offset += b - a
        pieces.append((offset, lo, hi))
        offset += hi - lo
    return Layout(new, tuple(pieces))


def _template(d: Draft, text: str, n: int) -> str:
    for template in (t for split in SPLITS for t in corpus.time_templates(split)):
        if corpus.time_request_text(template, n) == text:
            return template
    raise d.fail(f"{text!r} is not a timer request of the corpus asking for {n} s")


def change_requested_time(ep: Episode, cfg: StreamConfig, seconds: int, clips: ClipSource, request: int = 0) -> Episode:
    """Timer request `request` of a time_speak episode asks for `seconds` (one of
    `corpus.TIME_REQUEST_SECONDS`) instead, made the way time_speak makes it.

    A typed request is re-typed (same start; it is complete at the end of the chunk its last token lands
    in); a spoken one is the new sentence's clip in the user's voice, from the same start, with its pauses
    as long and in the same gaps between words. The request's end may move: the acknowledgement follows it
    by the reply rule (with the delay the episode drew), and the response starts at the chunk boundary
    nearest the new end + `seconds`, as time_speak places them; `requests[request]` and the utterance follow.
    Nothing else moves: ValueError when the response would come before a chunk after the acknowledgement,
    run into the user's next utterance or past the end, or the longer request into other user speech.
    """
    d = Draft(ep, cfg, "change_requested_time")
    requests = d.require("requests", "timer requests (a time_speak episode)")
    r = d.item(requests, request, "request")
    if seconds not in corpus.TIME_REQUEST_SECONDS:
        raise d.fail(f"seconds={seconds}: requests ask for one of {corpus.TIME_REQUEST_SECONDS}")
    ends_request = lambda u: d.sample(u["end"]) == d.sample(r["request_end"])
    index = next((i for i, u in enumerate(d.ann["user_utterances"]) if ends_request(u)), None)
    if index is None:
        raise d.fail(f"no user utterance ends at request {request}'s end, {r['request_end']:.3f} s")
    u = d.ann["user_utterances"][index]
    text = corpus.time_request_text(_template(d, u["text"], r["n"]), seconds)
    start, old_end = d.sample(u["start"]), d.sample(u["end"])
    if u["typed"]:
        old_tokens, tokens = (tuple(tokenizer.encode(t, specials=False)) for t in (u["text"], text))
        typed = [i for i, e in enumerate(d.user_text) if d.sample(e.time_s) == start and e.tokens == old_tokens]
        if not typed:
            raise d.fail(f"the typed request {u['text']!r} is not in its text input")
        d.user_text[typed[0]] = dataclasses.replace(d.user_text[typed[0]], tokens=tokens)
        arrived = text_arrival_chunk(u["start"], len(tokens), cfg.text_in_slots, cfg)
        new_end = (arrived + 1) * d.chunk
        u.update(text=text, end=d.seconds(new_end))
    else:
        voice = Voice.from_name(d.ann["user_voice"])
        layout = _relayout(d, u, clips.get(u["text"], voice), clips.get(text, voice))
        new_end = start + layout.num_samples
        d.remove_user_utterance(index)
        if (what := d.busy(start, new_end, model=False)) is not None:
            raise d.fail(f"the new request [{u['start']:.3f}, {d.seconds(new_end):.3f}) s overlaps {what}")
        d.mix_user(layout, start)
    later = [(m["start"], i) for i, m in enumerate(d.ann["model_utterances"]) if m["start"] >= r["request_end"]]
    if not later:
        raise d.fail(f"request {request} has no acknowledgement")
    ack = min(later)[1]
    ack_onset = d.sample(d.ann["model_utterances"][ack]["start"]) // d.chunk
    ack_move = d.reply_onset(ack_onset, old_end, new_end, "acknowledgement") - ack_onset
    ack_end = d.sample(r["ack_end"]) + ack_move * d.chunk
    response = d.model_starting_at(r["onset_chunk"], "timer's response")
    onset = nearest_chunk(d.seconds(new_end) + seconds, cfg)
    response_end = d.sample(d.ann["model_utterances"][response]["end"]) + (onset - r["onset_chunk"]) * d.chunk
    if onset * d.chunk < ack_end + d.chunk:
        raise d.fail(f"{seconds} s is too short: the response would start before a chunk after the acknowledgement")
    if response_end > (latest := _next_user_start(d, r["request_end"])):
        raise d.fail(f"after {seconds} s the response would not be over by {d.seconds(latest):.3f} s")
    d.move_model({ack: ack_move, response: onset - r["onset_chunk"]})
    r.update(
        n=seconds,
        request_end=d.seconds(new_end),
        ack_end=d.seconds(ack_end),
        target_time=d.seconds(new_end) + seconds,
        onset_chunk=onset,
    )
    return d.build()
