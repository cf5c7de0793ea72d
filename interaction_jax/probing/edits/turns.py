"""Edits of who holds the floor: a longer or shorter mid-turn pause, a user who stops early, a barge-in."""

from __future__ import annotations

import numpy as np

from interaction_jax.audio.voices import Voice
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus, scenarios
from interaction_jax.data.episode import ClipSource, Episode
from interaction_jax.data.scenarios import interruption
from interaction_jax.data.scenarios.common import Layout, faded
from interaction_jax.data.scenarios.scenario import Marker
from interaction_jax.probing.edits.timeline import Draft, whole_chunks
from interaction_jax.stream import chunk_seconds


def stretch_pause(ep: Episode, cfg: StreamConfig, seconds: float, utterance: int = 0, pause: int = 0) -> Episode:
    """Lengthen (seconds > 0) or shorten (seconds < 0) pause `pause` of user utterance `utterance`.

    The shift is in whole chunks (`seconds` rounded to the nearest, halves away from zero; 0 chunks changes
    nothing), so chunk-index annotations stay exact and the model still starts on chunk boundaries.
    Everything after the pause's start moves by it: the user's audio, text events, the model's reference
    output (audio and text: a reply still comes by the reply rule after the moved end), annotation times
    and chunk indices. Growing inserts the episode's own noise floor at the pause's start and cuts as much
    off the end; shrinking removes the first part of the pause and pads the end with the floor. The
    episode keeps its length; only the floor may fall off the end (ValueError otherwise, saying what
    fits). Shortening must leave some of the pause. The video is left as it was: an episode whose
    video shows something after the pause (a visual cue, a counted repetition) is refused.
    """
    d = Draft(ep, cfg, "stretch_pause")
    u = d.user_utterance(utterance)
    if not u["pauses"]:
        raise d.fail(f"user utterance {utterance} ({u['text']!r}) has no pauses")
    start, end = d.item(u["pauses"], pause, f"user utterance {utterance}'s pause")
    delta = whole_chunks(seconds, chunk_seconds(cfg)) * d.chunk
    length = d.sample(end) - d.sample(start)
    if -delta >= length:
        most = (length - 1) // d.chunk * d.chunk / d.sr
        what = f"shortening the {length / d.sr:.3f} s pause by {-delta / d.sr:.1f} s"
        raise d.fail(f"{what} leaves none of it (at most {most} s can go)")
    if delta and cfg.video:
        if scenarios.get(ep.scenario).needs_video:
            raise d.fail("what the model must see is in the video, which this edit cannot move")
        visual = [c["time"] for c in d.ann.get("cues", []) if c["kind"] == "visual" and c["time"] > start]
        if visual:
            raise d.fail(f"the visual cue at {visual[0]:.1f} s comes after the pause, and the video cannot move")
    d.shift(d.sample(start), delta)
    return d.build()


def cut_user_off(ep: Episode, cfg: StreamConfig, at_s: float, utterance: int = 0) -> Episode:
    """The user stops speaking at `at_s` (a sample) in spoken utterance `utterance` of an episode with
    `replies` (turn_taking).

    Their speech after `at_s` becomes the noise floor, the speech before it fades out over `common.FADE_S`
    (as the scenarios cut speech); a cut inside a pause ends the utterance where the pause starts. The
    utterance's `end`, its `pauses` and its `user_speech` spans end there; its `text` stays the sentence as
    planned. The reply moves to the chunk the reply rule gives for the new end, with the delay (0 or 1
    chunk) the episode drew, and `replies` follows; what comes after the reply stays where it was.
    """
    d = Draft(ep, cfg, "cut_user_off")
    replies = d.require("replies", "replies to user utterances (a turn_taking episode)")
    u = d.user_utterance(utterance)
    if u["typed"]:
        raise d.fail(f"user utterance {utterance} is typed, not spoken")
    start, end, cut = d.sample(u["start"]), d.sample(u["end"]), d.sample(at_s)
    if not start < cut < end:
        raise d.fail(f"at_s={at_s} s is not inside user utterance {utterance} [{u['start']:.3f}, {u['end']:.3f}) s")
    reply = next((r for r in replies if d.sample(r["user_end"]) == end), None)
    if reply is None:
        raise d.fail(f"user utterance {utterance} has no reply in `replies`")
    spans = d.voiced(u)
    inside = [s for s in spans if d.sample(s[0]) < cut < d.sample(s[1])]
    if inside:
        lo = d.sample(inside[0][0])
        speech = d.user[lo:cut] - d.floor[lo:cut]
        d.user[lo:cut] = np.clip(faded(speech, d.sr) + d.floor[lo:cut], -1.0, 1.0)
        new_end = cut
    else:  # in a pause: the last speech sample is where it starts
        new_end = max(d.sample(b) for _, b in spans if d.sample(b) <= cut)
    d.silence_user(new_end, end)
    for span in spans:
        d.ann["user_speech"].remove(span)
        if d.sample(span[0]) < new_end:
            d.ann["user_speech"].append([span[0], min(span[1], d.seconds(new_end))])
    u["end"] = d.seconds(new_end)
    u["pauses"] = [p for p in u["pauses"] if d.sample(p[1]) <= new_end]
    onset = d.reply_onset(reply["onset_chunk"], end, new_end)
    d.move_model({d.model_starting_at(reply["onset_chunk"], "reply"): onset - reply["onset_chunk"]})
    reply.update(user_end=d.seconds(new_end), onset_chunk=onset)
    return d.build()


def default_interjection(split: str) -> str:
    """The shortest interruption line of `split` ("one second please" held out), so its clip is in the bank."""
    return min(corpus.user_lines("interruption", split), key=len)


def insert_barge_in(ep: Episode, cfg: StreamConfig, at_s: float, clips: ClipSource, text: str | None = None) -> Episode:
    """The user says `text` (default `default_interjection` of the episode's split) in their own voice
    (`annotations["user_voice"]`) from `at_s` (a sample), typically while the model is talking.

    The reference output yields as interruption.py's data does: a model utterance still going at the end of
    the chunk the barge-in starts in (`cut_chunk`) stops there (`cut`), with a fade, only the words already
    begun in its text, then EOT; its `model_lines` choices are cut to as many words. The model does not
    answer the barge-in (interruption's answer is not added), and nothing else moves. Annotations gain the
    utterance (`user_utterances`, `user_speech`) and interruption's keys: `barge_in`, and `cut`/`cut_chunk`
    when something was cut. An episode that already has a barge-in, a barge-in that overlaps other user
    speech or a beep, runs past the end, or during which the model would start another utterance is refused.
    Other scenarios' metrics read the barge-in as a user utterance like any other: time_speak's timer search
    ends at the next user utterance, so a barge-in before (or in the chunk of) its response scores as missed.
    `eval.report.due_markers` reads only the episode's own scenario's markers: `markers` adds these.
    """
    d = Draft(ep, cfg, "insert_barge_in")
    if "barge_in" in d.ann:
        raise d.fail(f"it already has a barge-in at {d.ann['barge_in']:.3f} s (its annotations hold one)")
    text = text if text is not None else default_interjection(ep.split)
    clip = clips.get(text, Voice.from_name(d.ann["user_voice"]))
    if clip.sample_rate != d.sr:
        raise d.fail(f"clip {text!r} is at {clip.sample_rate} Hz, the stream at {d.sr} Hz")
    start = d.sample(at_s)
    end = start + clip.audio.size
    if start < 0 or end > d.total:
        raise d.fail(f"{text!r} ({clip.duration_s:.2f} s) from {at_s} s does not fit in [0, {d.end_s}) s")
    if (what := d.busy(start, end, model=False)) is not None:
        raise d.fail(f"the barge-in [{at_s:.3f}, {d.seconds(end):.3f}) s overlaps {what}")
    cut_chunk = start // d.chunk
    cut = (cut_chunk + 1) * d.chunk
    cut_any = False
    for i, m in enumerate(d.ann["model_utterances"]):
        a, b = d.sample(m["start"]), d.sample(m["end"])
        if a < cut < b:
            d.cut_model(i, cut)
            cut_any = True
        elif cut <= a < end:
            raise d.fail(f"the model's {m['text']!r} starts at {m['start']:.1f} s, while the barge-in is still going")
    d.mix_user(Layout(clip, ((0, 0, clip.audio.size),)), start)
    d.ann["barge_in"] = d.seconds(start)
    if cut_any:
        d.ann.update(cut=d.seconds(cut), cut_chunk=cut_chunk)
    return d.build()


def markers(ep: Episode, cfg: StreamConfig) -> list[Marker]:
    """`eval.report.due_markers` of `ep`, plus interruption's barge-in and cut markers where an edit added
    a barge-in to an episode of another scenario."""
    from interaction_jax.eval.report import due_markers  # here: eval imports the model, edits need not

    out = due_markers(ep.scenario, ep.annotations, cfg)
    if ep.scenario != interruption.NAME:
        out += interruption.event_markers(ep.annotations, cfg) + interruption.due_markers(ep.annotations, cfg)
    return sorted(out)
