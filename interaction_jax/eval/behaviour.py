"""Per-scenario behaviour metrics: what a free-running model did, scored against an episode's annotations.

Everything here is a pure function of (annotations, the model's TEXT_OUT ids per chunk, the stream
config), so it can be checked on hand-made rollouts and applied unchanged to the episode's own
reference output (`chunk_payloads(...).text_out`), which is how the report shows the value the data
itself scores next to the model's. Times are chunk indices: an event at time t lives in chunk
`render.event_chunk(t)`; a stretch ending (exclusively) at t has its last chunk `end_chunk(t)`.

A chunk is **active** (the model "says something" in it) when its TEXT_OUT holds any token other than
PAD and EOT (DELEGATE … END_DELEGATE count: they are things the model writes). The reference output
is sparse too (a word's tokens sit at its speech onset), so activity marks word onsets, not every
chunk of audible speech. An *onset* below is the first active chunk in a search window.

Every scenario:

- `text_agreement`: fraction of chunks where (model active) == (reference active).
- `audio_agreement`: fraction of chunks where (model audio energy > threshold) == (reference's); energy
  is the mean log10-mel of the chunk clipped to the dMel range, the threshold `dmel_min + 2`
  (silence reads exactly dmel_min, speech about −0.5).
- `text_rate`: fraction of chunks in which the model is active.
- `talk_over_rate`: fraction of the chunks holding user speech (`user_speech` spans) in which the model
  is active. The data is not always 0 (a barged-in reply overlaps the barge-in), so compare with it.
- `text_cer`: character error rate of the words the model says (`tokenizer.spoken_text` of its whole
  TEXT_OUT: SPEAK and EOT as word breaks, requests left out) against the words of the reference
  output, both lower-cased: Levenshtein distance / reference length (1.0 when it says nothing; may
  exceed 1 when it says much more). None when the reference says nothing.

Per scenario (MISS = 5 chunks, the search horizon after which an expected onset counts as missed):

- turn_taking, per reply (e = the last chunk of the user's utterance): `reply_latency_chunks` = onset
  − e for the first active chunk in [e+1, e+MISS] (the data's rule: 1 or 2); `reply_latency_s` =
  onset chunk start − user_end (FD-bench style, seconds); `reply_on_time` = onset in [e+1, e+2];
  `reply_missed` = no onset in the window. `pause_false_start`: fraction of mid-utterance pauses in
  which the model is active between the chunk after the pause starts and the chunk the user resumes
  in (taking a pause for the end of the turn; the data: 0).
- backchannel: `backchannel_hit` = fraction of annotated backchannels with an active chunk in
  [onset_chunk − 1, onset_chunk + 1].
- interruption (c = cut_chunk, E = last chunk of the barge-in): `talking_at_barge_in` = active in
  [reply start chunk, c]; `stop_latency_chunks` = max(0, last active chunk in [reply start, E] − c)
  (None when the model was not talking: nothing to yield); `yielded` = stop latency ≤ 2;
  `answer_latency_chunks` / `answer_on_time`: the reply-rule onset of the answer after E, as for
  turn_taking.
- time_speak, per request (search from the chunk after the request ends up to the chunk before the
  next user utterance): `timer_error_s` = onset chunk start − target_time (signed),
  `timer_abs_error_s` = its absolute value (both over the requests answered), `timer_hit` = onset
  within onset_chunk ± 1, `timer_missed` = no onset at all.
- cue_speak, per cue (p = perceived_chunk): `cue_latency_chunks` = onset − p for the first active
  chunk in [p, p+MISS] (the data: 1); `cue_hit` = onset within onset_chunk ± 1; `cue_missed`;
  `cue_premature` = active between the end of the request and p (the data says nothing there).
- rep_count: the model's text is decoded (specials as spaces) and number words ("one" … "six") found
  as whole words; `count_correct` = the last number word said is `count` (nothing said: wrong);
  `count_error` = that number − count; per expected word i: its first occurrence's chunk −
  onset_chunks[i] → `number_abs_error_chunks` (mean over the words said), `number_hit` (within ±1),
  `numbers_said` (fraction of the expected words said at all).
- delegate, per delegation: `delegate_hit` = a DELEGATE token within request_chunk ± 2;
  `request_exact` = the text up to the next END_DELEGATE is exactly the annotated request;
  `answer_said` = the answer (e.g. "22", "3:15") said as a whole word from result_chunk until the next
  delegation's request_chunk; `answer_delay_chunks` = its chunk − result_chunk.

Episode values are means over that episode's events; `aggregate` averages episodes equally, skipping
None/NaN (a metric that does not apply to an episode), and sums the `n_*` event counts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.audio.activity import audio_active
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.render import event_chunk
from interaction_jax.stream import chunk_samples, chunk_seconds

MISS_CHUNKS = 5  # an expected onset not seen within this many chunks counts as missed
YIELD_CHUNKS = 2  # an interrupted model must fall silent within this many chunks after cut_chunk

Metrics = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Per-chunk views


def text_active(text) -> np.ndarray:
    """bool [n]: chunk k's TEXT_OUT ids (int [n, slots]) hold a token other than PAD and EOT."""
    text = np.asarray(text)
    return np.any((text != tokenizer.PAD) & (text != tokenizer.EOT), axis=-1)


def end_chunk(time_s: float, s: StreamConfig) -> int:
    """The chunk holding the last sample of a stretch that ends (exclusively) at `time_s`."""
    end_sample = round(time_s * s.sample_rate)
    return max(0, (end_sample - 1) // chunk_samples(s))


def span_chunks(spans: Iterable[Sequence[float]], num_chunks: int, s: StreamConfig) -> np.ndarray:
    """bool [num_chunks]: chunks overlapping any [start, end) span (seconds)."""
    out = np.zeros(num_chunks, bool)
    for start, end in spans:
        if end > start:
            out[max(0, event_chunk(start, s)) : min(num_chunks, end_chunk(end, s) + 1)] = True
    return out


def first_active(flags: np.ndarray, lo: int, hi: int) -> int | None:
    """The first k in [lo, hi] (clipped to the episode) with flags[k], else None."""
    lo, hi = max(lo, 0), min(hi, len(flags) - 1)
    for k in range(lo, hi + 1):
        if flags[k]:
            return k
    return None


def last_active(flags: np.ndarray, lo: int, hi: int) -> int | None:
    """The last k in [lo, hi] (clipped to the episode) with flags[k], else None."""
    lo, hi = max(lo, 0), min(hi, len(flags) - 1)
    for k in range(hi, lo - 1, -1):
        if flags[k]:
            return k
    return None


def _any(flags: np.ndarray, lo: int, hi: int) -> bool:
    return first_active(flags, lo, hi) is not None


@dataclasses.dataclass(frozen=True)
class TextStream:
    """The model's text as one run of bytes, specials as single spaces, PAD dropped, with each byte's chunk."""

    data: bytes
    chunks: np.ndarray  # int [len(data)]
    ids: np.ndarray  # int [len(data)]: the token id each byte came from

    @classmethod
    def of(cls, text) -> TextStream:
        data, chunks, ids = bytearray(), [], []
        for k, row in enumerate(np.asarray(text)):
            for t in row:
                t = int(t)
                if t == tokenizer.PAD:
                    continue
                data.append(t if t < tokenizer.NUM_BYTES else ord(" "))
                chunks.append(k)
                ids.append(t)
        return cls(bytes(data), np.asarray(chunks, np.int64), np.asarray(ids, np.int64))

    def find_words(self, pattern: str) -> list[tuple[str, int]]:
        """(match, chunk of its first byte) of every whole-word, case-insensitive match of `pattern`."""
        regex = re.compile(rb"(?<![0-9a-z])(" + pattern.encode() + rb")(?![0-9a-z])", re.IGNORECASE)
        return [
            (m.group(1).decode("ascii", "replace").lower(), int(self.chunks[m.start(1)]))
            for m in regex.finditer(self.data)
        ]

    def find_phrase(self, phrase: str, lo: int, hi: int) -> int | None:
        """Chunk of the first whole-word occurrence of `phrase` starting in chunks [lo, hi], else None."""
        for _, k in self.find_words(re.escape(phrase)):
            if lo <= k <= hi:
                return k
        return None


# ----------------------------------------------------------------------------------------------
# Small statistics


def _mean(values: Iterable[float | bool | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(kept)) if kept else None


def _user_utterances(annotations: dict) -> list[dict]:
    return sorted(annotations.get("user_utterances", []), key=lambda u: u["start"])


# ----------------------------------------------------------------------------------------------
# Scenarios


def turn_taking(annotations: dict, text, s: StreamConfig) -> Metrics:
    flags = text_active(text)
    c = chunk_seconds(s)
    latency, latency_s, on_time, missed = [], [], [], []
    for reply in annotations.get("replies", []):
        e = end_chunk(reply["user_end"], s)
        k = first_active(flags, e + 1, e + MISS_CHUNKS)
        missed.append(k is None)
        on_time.append(k is not None and k - e <= 2)
        if k is not None:
            latency.append(k - e)
            latency_s.append(k * c - reply["user_end"])
    pause_starts = []
    for u in _user_utterances(annotations):
        for start, end in u.get("pauses", []):
            pause_starts.append(_any(flags, end_chunk(start, s) + 1, event_chunk(end, s)))
    return {
        "reply_latency_chunks": _mean(latency),
        "reply_latency_s": _mean(latency_s),
        "reply_on_time": _mean(on_time),
        "reply_missed": _mean(missed),
        "pause_false_start": _mean(pause_starts),
        "n_replies": len(missed),
        "n_pauses": len(pause_starts),
    }


def backchannel(annotations: dict, text, s: StreamConfig) -> Metrics:
    flags = text_active(text)
    hits = [_any(flags, b["onset_chunk"] - 1, b["onset_chunk"] + 1) for b in annotations.get("backchannels", [])]
    return {"backchannel_hit": _mean(hits), "n_backchannels": len(hits)}


def interruption(annotations: dict, text, s: StreamConfig) -> Metrics:
    flags = text_active(text)
    cut = int(annotations["cut_chunk"])
    barge_in = float(annotations["barge_in"])
    cut_replies = [u for u in annotations.get("model_utterances", []) if u.get("cut")]
    reply_start = event_chunk(cut_replies[0]["start"], s) if cut_replies else cut
    barge = [u for u in _user_utterances(annotations) if abs(u["start"] - barge_in) < 1e-6]
    barge_end = end_chunk(barge[0]["end"], s) if barge else cut
    talking = _any(flags, reply_start, cut)
    stop_latency = yielded = None
    if talking:
        last = last_active(flags, reply_start, barge_end)
        stop_latency = max(0, last - cut)
        yielded = stop_latency <= YIELD_CHUNKS
    k = first_active(flags, barge_end + 1, barge_end + MISS_CHUNKS)
    return {
        "talking_at_barge_in": float(talking),
        "yielded": None if yielded is None else float(yielded),
        "stop_latency_chunks": None if stop_latency is None else float(stop_latency),
        "answer_latency_chunks": None if k is None else float(k - barge_end),
        "answer_on_time": float(k is not None and k - barge_end <= 2),
    }


def time_speak(annotations: dict, text, s: StreamConfig) -> Metrics:
    flags = text_active(text)
    c = chunk_seconds(s)
    n = len(flags)
    utterances = _user_utterances(annotations)
    errors, hits, missed = [], [], []
    for r in annotations.get("requests", []):
        lo = end_chunk(r["request_end"], s) + 1
        later = [u["start"] for u in utterances if u["start"] >= r["request_end"]]
        hi = event_chunk(later[0], s) - 1 if later else n - 1
        k = first_active(flags, lo, hi)
        missed.append(k is None)
        hits.append(k is not None and abs(k - r["onset_chunk"]) <= 1)
        if k is not None:
            errors.append(k * c - r["target_time"])
    return {
        "timer_abs_error_s": _mean(abs(e) for e in errors),
        "timer_error_s": _mean(errors),
        "timer_hit": _mean(hits),
        "timer_missed": _mean(missed),
        "n_requests": len(missed),
    }


def cue_speak(annotations: dict, text, s: StreamConfig) -> Metrics:
    flags = text_active(text)
    utterances = _user_utterances(annotations)
    latency, hits, missed, premature = [], [], [], []
    for cue in annotations.get("cues", []):
        p, onset = int(cue["perceived_chunk"]), int(cue["onset_chunk"])
        before = [u["end"] for u in utterances if u["start"] < cue["time"]]
        wait_from = end_chunk(before[-1], s) + 1 if before else 0
        premature.append(_any(flags, wait_from, p - 1))
        k = first_active(flags, p, p + MISS_CHUNKS)
        missed.append(k is None)
        hits.append(k is not None and abs(k - onset) <= 1)
        if k is not None:
            latency.append(k - p)
    return {
        "cue_latency_chunks": _mean(latency),
        "cue_hit": _mean(hits),
        "cue_missed": _mean(missed),
        "cue_premature": _mean(premature),
        "n_cues": len(missed),
    }


NUMBER_PATTERN = "|".join(corpus.NUMBER_WORDS)


def number_words(text) -> list[tuple[int, int]]:
    """(number, chunk) of every number word ("one" → 1 …) the model says, in order."""
    return [(corpus.NUMBER_WORDS.index(w) + 1, k) for w, k in TextStream.of(text).find_words(NUMBER_PATTERN)]


def rep_count(annotations: dict, text, s: StreamConfig) -> Metrics:
    said = number_words(text)
    count = int(annotations["count"])
    last = said[-1][0] if said else None
    errors = []
    for i, onset in enumerate(annotations.get("onset_chunks", []), start=1):
        first = next((k for number, k in said if number == i), None)
        errors.append(None if first is None else first - int(onset))
    found = [e for e in errors if e is not None]
    return {
        "count_correct": float(last == count),
        "count_error": None if last is None else float(last - count),
        "number_abs_error_chunks": _mean(abs(e) for e in found),
        "number_hit": _mean(e is not None and abs(e) <= 1 for e in errors),
        "numbers_said": _mean(e is not None for e in errors),
        "n_numbers": len(errors),
    }


def _delegate_request(stream: TextStream, lo: int, hi: int) -> tuple[int | None, str | None]:
    """(chunk, request text) of the first DELEGATE written in chunks [lo, hi]; the text is None when what
    follows it is not a request by the session's rule (`tokenizer.RequestReader`)."""
    for i in np.flatnonzero(stream.ids == tokenizer.DELEGATE):
        if lo <= stream.chunks[i] <= hi:
            reader = tokenizer.RequestReader()
            reader.feed(tokenizer.DELEGATE)
            for j in (int(j) for j in stream.ids[i + 1 :]):
                taken, request = reader.feed(j)
                if request is not None:
                    return int(stream.chunks[i]), request
                if not taken or j == tokenizer.DELEGATE:  # it was not a request
                    break
            return int(stream.chunks[i]), None
    return None, None


def delegate(annotations: dict, text, s: StreamConfig) -> Metrics:
    n = len(np.asarray(text))
    stream = TextStream.of(text)
    delegations = sorted(annotations.get("delegations", []), key=lambda d: d["request_chunk"])
    hits, exact, said, delays = [], [], [], []
    for i, d in enumerate(delegations):
        rc = int(d["request_chunk"])
        chunk, request = _delegate_request(stream, rc - 2, rc + 2)
        hits.append(chunk is not None)
        exact.append(request == d["request"])
        hi = int(delegations[i + 1]["request_chunk"]) - 1 if i + 1 < len(delegations) else n - 1
        k = stream.find_phrase(str(d["answer"]), int(d["result_chunk"]), hi)
        said.append(k is not None)
        if k is not None:
            delays.append(k - int(d["result_chunk"]))
    return {
        "delegate_hit": _mean(hits),
        "request_exact": _mean(exact),
        "answer_said": _mean(said),
        "answer_delay_chunks": _mean(delays),
        "n_delegations": len(hits),
    }


SCENARIO_METRICS = {
    "turn_taking": turn_taking,
    "backchannel": backchannel,
    "interruption": interruption,
    "time_speak": time_speak,
    "cue_speak": cue_speak,
    "rep_count": rep_count,
    "delegate": delegate,
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions cost 1)."""
    if not a or not b:
        return len(a) + len(b)
    row = np.arange(len(b) + 1)
    target = np.frombuffer(b.encode("utf-32-le"), np.uint32)
    for i, ch in enumerate(a, start=1):
        substitute = row[:-1] + (target != ord(ch))
        new = np.empty_like(row)
        new[0] = i
        # new[j] = min(row[j] + 1, row[j-1] + cost, new[j-1] + 1); the last term runs along the row
        new[1:] = np.minimum(row[1:] + 1, substitute)
        new = np.minimum.accumulate(new - np.arange(len(new))) + np.arange(len(new))
        row = new
    return int(row[-1])


def character_error_rate(text, reference_text) -> float | None:
    """CER of the words said in TEXT_OUT ids `text` against those of `reference_text` (see `text_cer`)."""
    hypothesis = tokenizer.spoken_text(np.asarray(text).ravel()).lower()
    reference = tokenizer.spoken_text(np.asarray(reference_text).ravel()).lower()
    if not reference:
        return None
    return edit_distance(hypothesis, reference) / len(reference)


def common(
    annotations: dict,
    text,
    s: StreamConfig,
    *,
    reference_text=None,
    energy=None,
    reference_energy=None,
) -> Metrics:
    """The metrics every scenario reports (agreement with the reference where one is given)."""
    flags = text_active(text)
    user = span_chunks(annotations.get("user_speech", []), len(flags), s)
    out: Metrics = {
        "text_agreement": None,
        "audio_agreement": None,
        "text_rate": float(flags.mean()) if len(flags) else None,
        "talk_over_rate": float(flags[user].mean()) if user.any() else None,
        "text_cer": None,
    }
    if reference_text is not None:
        out["text_agreement"] = float(np.mean(flags == text_active(reference_text)))
        out["text_cer"] = character_error_rate(text, reference_text)
    if energy is not None and reference_energy is not None:
        out["audio_agreement"] = float(np.mean(audio_active(energy, s) == audio_active(reference_energy, s)))
    return out


def episode_metrics(
    scenario: str,
    annotations: dict,
    text,
    s: StreamConfig,
    *,
    reference_text=None,
    energy=None,
    reference_energy=None,
) -> Metrics:
    """The common metrics plus the scenario's own, for one episode (keys fixed per scenario)."""
    if scenario not in SCENARIO_METRICS:
        raise ValueError(f"unknown scenario {scenario!r}; use one of {list(SCENARIO_METRICS)}")
    text = np.asarray(text)
    if text.ndim != 2:
        raise ValueError(f"text must be TEXT_OUT ids [num_chunks, slots], got shape {text.shape}")
    out = common(annotations, text, s, reference_text=reference_text, energy=energy, reference_energy=reference_energy)
    return out | SCENARIO_METRICS[scenario](annotations, text, s)


def aggregate(episodes: Sequence[Metrics]) -> dict[str, dict[str, float | int | None]]:
    """Per key: {"mean": mean over the episodes where it applies (None/NaN skipped) or None, "std": their
    standard deviation, "n": how many}.

    `n_*` keys are event counts: their "mean" is the total over the episodes.
    """
    keys = list(dict.fromkeys(k for m in episodes for k in m))
    out: dict[str, dict[str, float | int | None]] = {}
    for key in keys:
        values = [m.get(key) for m in episodes]
        kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if key.startswith("n_"):
            out[key] = {"mean": float(sum(kept)), "n": len(kept)}
        else:
            out[key] = {
                "mean": float(np.mean(kept)) if kept else None,
                "std": float(np.std(kept)) if kept else None,
                "n": len(kept),
            }
    return out
