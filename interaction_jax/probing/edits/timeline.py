"""What every edit shares: a working copy of an episode (`Draft`) and moving things along its time line.

Conventions (the same as `data/scenarios/common.py`): bookkeeping in integer samples, seconds only in
annotations and text events; S = samples per chunk. Model speech starts on chunk boundaries, so the model's
utterances move by whole chunks (`Draft.move_model`), and a shift of the whole time line (`Draft.shift`) is
a whole number of chunks too: chunk-index annotations then move by exactly that many chunks.

Annotations are walked with `map_times`, which reads from the scenarios' own declarations
(`Scenario.annotation_keys`) whether each numeric key is a time (seconds), a chunk index or neither, and
refuses a key no scenario declares rather than guess.

The user's microphone carries a noise floor under everything; what an edit leaves silent gets the
episode's own floor (`Draft.floor`: the builder's noise stream regenerated from the seed), so a silenced
stretch of an unedited scenario episode is bit-identical to what the scenario would have made there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.config import StreamConfig
from interaction_jax.data import scenarios
from interaction_jax.data.episode import Episode, TextEvent, check_episode
from interaction_jax.data.scenarios.common import BEEP_S, Layout, faded, noise_floor
from interaction_jax.data.scenarios.scoring import last_chunk
from interaction_jax.stream import chunk_samples


def map_times(value: Any, on_time: Callable[[float], float], on_chunk: Callable[[int], int], key: str = "") -> Any:
    """A copy of the annotation tree `value` with `on_time` applied to every time and `on_chunk` to every
    chunk index, as the scenarios declare their keys (`data.scenarios.annotation_kinds`); raises
    ValueError for a numeric key no scenario declares."""
    return _mapped(value, on_time, on_chunk, key, scenarios.annotation_kinds())


def _mapped(value: Any, on_time, on_chunk, key: str, kinds: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _mapped(v, on_time, on_chunk, k, kinds) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mapped(v, on_time, on_chunk, key, kinds) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    kind = kinds.get(key)
    if kind is None:
        raise ValueError(
            f"annotation {key!r} holds a number no scenario declares; add it to its scenario's `annotation_keys`"
        )
    return on_time(value) if kind == "time" else on_chunk(value) if kind == "chunk" else value


def whole_chunks(seconds: float, step_s: float) -> int:
    """`seconds` in whole steps of `step_s`, halves away from zero (0.3 s at 0.2 s → 2 steps, −0.3 s → −2)."""
    steps = abs(seconds) / step_s
    return int(math.copysign(math.floor(steps + 0.5 + 1e-9), seconds))


class Draft:
    """A mutable working copy of an episode that an edit changes, then `build`s into a new checked `Episode`.

    Error messages name the edit and the episode: raise `draft.fail("…")`.
    """

    def __init__(self, ep: Episode, cfg: StreamConfig, edit: str):
        self.ep, self.cfg, self.edit = check_episode(ep, cfg), cfg, edit
        self.sr, self.chunk = cfg.sample_rate, chunk_samples(cfg)
        self.total = ep.num_chunks * self.chunk
        self.user, self.model, self.frames = ep.user_audio.copy(), ep.model_audio.copy(), ep.frames
        self.user_text, self.model_text = list(ep.user_text), list(ep.model_text)
        self.ann: dict[str, Any] = copy.deepcopy(ep.annotations)

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.edit}: {self.ep.scenario} episode {self.ep.seed}: {message}")

    # --- time -----------------------------------------------------------------------------------

    def sample(self, seconds: float) -> int:
        return round(seconds * self.sr)

    def seconds(self, sample: int) -> float:
        return sample / self.sr

    def moved(self, seconds: float, delta: int) -> float:
        """`seconds` moved by `delta` samples; a time on the sample grid stays sample / rate, exactly as the
        builder writes it (so an edit and a scenario agree on every annotation to the last bit)."""
        sample = seconds * self.sr
        if abs(sample - round(sample)) < 1e-6:
            return (round(sample) + delta) / self.sr
        return seconds + delta / self.sr

    @property
    def end_s(self) -> float:
        return self.total / self.sr

    @functools.cached_property
    def floor(self) -> np.ndarray:
        """The user's noise floor over the whole episode: `EpisodeBuilder`'s noise stream, regenerated."""
        number = scenarios.get(self.ep.scenario).number
        return noise_floor(self.ep.seed, number, self.total, self.ann["noise_level"])

    def reply_onset(self, old_onset: int, old_end: int, new_end: int, what: str = "reply") -> int:
        """The reply rule (`common.reply_chunk`) for user speech now ending at sample `new_end`, with the delay
        r ∈ {0, 1} the episode drew for the `what` at chunk `old_onset` to speech that ended at `old_end`."""
        r = old_onset - last_chunk(old_end, self.cfg) - 1
        if r not in (0, 1):
            raise self.fail(f"the {what} at chunk {old_onset} does not follow the reply rule (r = {r})")
        return last_chunk(new_end, self.cfg) + 1 + r

    # --- looking things up ----------------------------------------------------------------------

    def require(self, key: str, what: str) -> Any:
        if not self.ann.get(key):
            raise self.fail(f"it has no {what} (annotation {key!r})")
        return self.ann[key]

    def item(self, items: list, index: int, what: str) -> Any:
        if not 0 <= index < len(items):
            raise self.fail(f"{what} {index} is out of range: there are {len(items)}")
        return items[index]

    def user_utterance(self, index: int) -> dict:
        """User utterance `index`, in time order (the order of `annotations["user_utterances"]`)."""
        return self.item(self.ann["user_utterances"], index, "user utterance")

    def model_starting_at(self, chunk: int, what: str) -> int:
        """The index in `model_utterances` of the utterance that starts at chunk `chunk`."""
        for i, u in enumerate(self.ann["model_utterances"]):
            if self.sample(u["start"]) == chunk * self.chunk:
                return i
        raise self.fail(f"no model utterance starts at chunk {chunk}, where the {what} is annotated")

    def voiced(self, u: dict) -> list[list[float]]:
        """The `user_speech` spans of user utterance `u`."""
        lo, hi = self.sample(u["start"]), self.sample(u["end"])
        return [s for s in self.ann["user_speech"] if lo <= self.sample(s[0]) and self.sample(s[1]) <= hi]

    def beeps(self) -> list[tuple[float, float]]:
        return [(c["time"], c["time"] + BEEP_S) for c in self.ann.get("cues", []) if c["kind"] == "audio"]

    def busy(self, lo: int, hi: int, user: bool = True, model: bool = True, text: bool = False) -> str | None:
        """What is heard (or written) in samples [lo, hi), described, or None when only the floor is."""
        spans: list[tuple[str, Iterable]] = []
        if user:
            spans += [("user speech", self.ann["user_speech"]), ("a beep", self.beeps())]
        if model:
            spans.append(("model speech", self.ann["model_speech"]))
        for name, items in spans:
            for a, b in items:
                if self.sample(a) < hi and lo < self.sample(b):
                    return f"{name} at [{a:.3f}, {b:.3f}) s"
        events = [*self.user_text, *self.model_text] if text else []
        for e in events:
            if lo <= self.sample(e.time_s) < hi:
                return f"a text event at {e.time_s:.3f} s"
        return None

    # --- the whole time line --------------------------------------------------------------------

    def shift(self, point: int, delta: int) -> None:
        """Move everything after sample `point` by `delta` samples (a whole number of chunks): user and model
        audio, text events, annotation times after `point` and chunk indices of chunks starting after it.
        Growing inserts the floor (and model silence) at `point` and cuts as much off the end; shrinking
        removes [point, point − delta) and pads the end with the floor. Only the floor may be cut off or
        removed: anything else raises ValueError, which says how far it could move."""
        if delta % self.chunk:
            raise ValueError(f"shift by {delta} samples is not a whole number of chunks of {self.chunk}")
        if delta == 0:
            return
        after = lambda t: t * self.sr > point + 0.5
        latest = [point]  # the last sample of anything after `point`, which the end must still hold
        map_times(
            self.ann,
            lambda t: latest.append(round(t * self.sr)) if after(t) else None,
            lambda k: latest.append((k + 1) * self.chunk) if k * self.chunk > point else None,
        )
        latest += [self.sample(e.time_s) + 1 for e in (*self.user_text, *self.model_text) if after(e.time_s)]
        room = self.total - max(latest)
        if delta > room:
            raise self.fail(
                f"moving what follows {self.seconds(point):.3f} s by {self.seconds(delta):.2f} s pushes it past the "
                f"end of the episode; {room // self.chunk * self.chunk / self.sr:.1f} s (whole chunks) fit"
            )
        lo, hi = (point, point - delta) if delta < 0 else (point, point + 1)
        if (what := self.busy(lo, hi, text=delta < 0)) is not None:
            doing = "removing" if delta < 0 else "inserting silence at"
            raise self.fail(f"{doing} [{self.seconds(lo):.3f}, {self.seconds(hi):.3f}) s would cut into {what}")
        self.user = _shifted(self.user, point, delta, self.floor)
        self.model = _shifted(self.model, point, delta, np.zeros_like(self.model))
        dk = delta // self.chunk
        move = lambda e: dataclasses.replace(e, time_s=self.moved(e.time_s, delta)) if after(e.time_s) else e
        self.user_text, self.model_text = [move(e) for e in self.user_text], [move(e) for e in self.model_text]
        self.ann = map_times(
            self.ann,
            lambda t: self.moved(t, delta) if after(t) else t,
            lambda k: k + dk if k * self.chunk > point else k,
        )

    # --- the model's utterances -----------------------------------------------------------------

    def move_model(self, moves: dict[int, int]) -> None:
        """Move model utterances (index in `model_utterances` → whole chunks) with their audio, text events,
        `model_speech` span and `model_lines` entry; the caller updates its scenario's own keys. What belongs
        to each utterance is found before anything moves, so utterances may trade places."""
        plans = []
        for i, chunks in moves.items():
            u = self.ann["model_utterances"][i]
            a, b = self.sample(u["start"]), self.sample(u["end"])
            if a + chunks * self.chunk < 0 or b + chunks * self.chunk > self.total:
                raise self.fail(f"the model's {u['text']!r} moved by {chunks} chunks would not fit in the episode")
            spans = [s for s in self.ann["model_speech"] if self.sample(s[0]) == a]
            lines = [line for line in self.ann["model_lines"] if self.sample(line["start"]) == a]
            events = [j for j, e in enumerate(self.model_text) if a <= self.sample(e.time_s) <= b]
            plans.append((u, a, b, chunks * self.chunk, spans, lines, events, self.model[a:b].copy()))
        for _, a, b, *_ in plans:
            self.model[a:b] = 0.0
        for u, a, b, d, spans, lines, events, audio in plans:
            self.model[a + d : b + d] = audio
            for j in events:
                e = self.model_text[j]
                self.model_text[j] = dataclasses.replace(e, time_s=self.moved(e.time_s, d))
            for s in spans:
                s[:] = [(a + d) / self.sr, (b + d) / self.sr]
            for line in lines:
                line["start"] = (a + d) / self.sr
            u.update(start=(a + d) / self.sr, end=(b + d) / self.sr)
        utterances = self.ann["model_utterances"]
        placed = sorted((self.sample(u["start"]), self.sample(u["end"]), u["text"]) for u in utterances)
        for (_, b, first), (a, _, second) in itertools.pairwise(placed):
            if a < b:
                raise self.fail(f"the model's {second!r} would start before its {first!r} ends")

    def cut_model(self, index: int, cut: int) -> None:
        """Stop model utterance `index` at sample `cut` as `EpisodeBuilder.say_model` does: a fade, only the
        words begun before the cut in its text, then EOT; its `model_lines` choices cut to as many words."""
        u = self.ann["model_utterances"][index]
        a, b = self.sample(u["start"]), self.sample(u["end"])
        if not a < cut < b:
            raise ValueError(f"cut at sample {cut} is not inside the model's utterance [{a}, {b})")
        self.model[a:cut] = faded(self.model[a:cut], self.sr)
        self.model[cut:b] = 0.0
        mine = [e for e in self.model_text if a <= self.sample(e.time_s) <= b]
        spoken = [e for e in mine if self.sample(e.time_s) < cut and e.tokens[0] == tokenizer.SPEAK]
        self.model_text = [e for e in self.model_text if e not in mine or e in spoken]  # the EOT goes: `build` adds it
        said = " ".join(tokenizer.decode(e.tokens[1:]) for e in spoken)
        words = len(said.split())
        for line in self.ann["model_lines"]:
            if self.sample(line["start"]) == a:
                line["choices"] = sorted({said, *(" ".join(c.split()[:words]) for c in line["choices"])})
        for s in self.ann["model_speech"]:
            if self.sample(s[0]) == a:
                s[1] = cut / self.sr
        u.update(end=cut / self.sr, cut=True)

    # --- the user's speech ----------------------------------------------------------------------

    def silence_user(self, lo: int, hi: int) -> None:
        self.user[lo:hi] = self.floor[lo:hi]

    def remove_user_utterance(self, index: int) -> dict:
        """Take user utterance `index` out: its voiced spans become the floor; returns its annotation."""
        u = self.ann["user_utterances"].pop(index)
        for span in self.voiced(u):
            self.silence_user(self.sample(span[0]), self.sample(span[1]))
            self.ann["user_speech"].remove(span)
        return u

    def mix_user(self, layout: Layout, start: int) -> dict:
        """Mix a laid-out user utterance over the floor from sample `start`, as `EpisodeBuilder.place_user`
        does (the same fades, the same sum and clipping), and annotate it; returns its annotation."""
        size = layout.clip.audio.size
        for offset, clip_from, clip_to in layout.pieces:
            piece = faded(layout.clip.audio[clip_from:clip_to], self.sr, clip_from > 0, clip_to < size)
            lo = start + offset
            self.user[lo : lo + piece.size] = np.clip(self.user[lo : lo + piece.size] + piece, -1.0, 1.0)
        span = lambda a, b: [(start + a) / self.sr, (start + b) / self.sr]
        self.ann["user_speech"] += [span(a, b) for a, b in layout.voiced()]
        u = {
            "start": start / self.sr,
            "end": (start + layout.num_samples) / self.sr,
            "text": layout.clip.text,
            "pauses": [span(a, b) for a, b in layout.pauses()],
            "typed": False,
        }
        self.ann["user_utterances"].append(u)
        return u

    # --- the result -----------------------------------------------------------------------------

    def build(self) -> Episode:
        """The edited episode: EOT after every model utterance that ends before the episode does (and none
        at its end, as `say_model`), lists in time order as `EpisodeBuilder.build` writes them, checked."""
        is_eot = lambda e: e.tokens == (tokenizer.EOT,)
        self.model_text = [e for e in self.model_text if not (is_eot(e) and self.sample(e.time_s) >= self.total)]
        for u in self.ann["model_utterances"]:
            end = self.sample(u["end"])
            if end < self.total and not any(is_eot(e) and self.sample(e.time_s) == end for e in self.model_text):
                self.model_text.append(TextEvent(u["end"], (tokenizer.EOT,)))
        a = self.ann
        a["user_speech"], a["model_speech"] = sorted(a["user_speech"]), sorted(a["model_speech"])
        for key in ("user_utterances", "model_utterances", "model_lines"):
            a[key] = sorted(a[key], key=lambda u: u["start"])
        by_time = lambda events: tuple(sorted(events, key=lambda e: e.time_s))
        ep = dataclasses.replace(
            self.ep,
            user_audio=self.user,
            model_audio=self.model,
            frames=self.frames,
            user_text=by_time(self.user_text),
            model_text=by_time(self.model_text),
            annotations=a,
        )
        return check_episode(ep, self.cfg)


def _shifted(a: np.ndarray, point: int, delta: int, fill: np.ndarray) -> np.ndarray:
    """`a` with [point, end) moved by `delta` samples; the gap opened takes `fill` at the same samples."""
    out, n = a.copy(), a.size
    if delta > 0:
        out[point + delta :] = a[point : n - delta]
        out[point : point + delta] = fill[point : point + delta]
    else:
        out[point : n + delta] = a[point - delta :]
        out[n + delta :] = fill[n + delta :]
    return out
