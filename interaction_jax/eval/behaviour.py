"""Behaviour metrics: what a free-running model did, scored against an episode's annotations.

Everything here is a pure function of (annotations, the model's TEXT_OUT ids per chunk, the stream
config), so it can be checked on hand-made rollouts and applied unchanged to the episode's own reference
output (`chunk_payloads(...).text_out`), which is how the report shows the value the data itself scores
next to the model's. What a chunk being *active* means, and the other pieces the metrics are built from,
is in `data/scenarios/scoring.py`.

Every scenario:

- `text_agreement`: fraction of chunks where (model active) == (reference active).
- `audio_agreement`: fraction of chunks where (model audio energy > threshold) == (reference's); energy
  is the mean log10-mel of the chunk clipped to the dMel range, the threshold `dmel_min + 2`
  (silence reads exactly dmel_min, speech about −0.5).
- `text_rate`: fraction of chunks in which the model is active.
- `talk_over_rate`: fraction of the chunks holding user speech (`user_speech` spans) in which the model
  is active. The data is not always 0 (a barged-in reply overlaps the barge-in), so compare with it.
- `text_cer`: character error rate of the words the model says (`tokenizer.spoken_text` of its whole
  TEXT_OUT: SPEAK and EOT as word breaks, requests left out) against the nearest words the episode could
  have had: each line the reference says is one the scenario drew at random from a few (a reply, an
  acknowledgement…) that nothing in the input tells apart, so each may be any of them (the annotations'
  `model_lines`). Lower-cased; Levenshtein distance to the nearest such reference / that reference's
  length (1.0 when it says nothing; may exceed 1 when it says much more). None when the reference says
  nothing. Against the lines drawn alone (`text_cer_drawn`), even the data scored against a second draw
  of itself has a CER of 37–72% per scenario (`benchmarks/cer_floor.py`).
- `text_cer_drawn`: the same against the words of the reference output itself, the lines as drawn.

Each scenario's own metrics are its record's `metrics` (`data.scenarios.get(name)`), defined and
described in its module. Episode values are means over that episode's events; `aggregate` averages
episodes equally, skipping None/NaN (a metric that does not apply to an episode), and sums the `n_*`
event counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.audio.activity import audio_active
from interaction_jax.config import StreamConfig
from interaction_jax.data import scenarios
from interaction_jax.data.scenarios.scoring import Metrics, span_chunks, text_active

# Alignments are scored as one integer, edits · _PER_EDIT − reference characters consumed: the minimum is the
# fewest edits and, among those, the longest reference (both add up along a path, so each row below stays
# one array, and a tie between references goes to the one that gives the lower CER).
_PER_EDIT = 1 << 20
_UNREACHABLE = 1 << 50


def _extend(row: np.ndarray, line: str, hypothesis: np.ndarray) -> np.ndarray:
    """The alignment row after `line` more reference characters: row[j] scores the best alignment of the
    reference so far with hypothesis[:j]."""
    inserted = _PER_EDIT * np.arange(len(row))
    for ch in line:
        new = row + (_PER_EDIT - 1)  # the reference character left unmatched
        new[1:] = np.minimum(new[1:], row[:-1] + _PER_EDIT * (hypothesis != ord(ch)) - 1)  # matched or substituted
        # hypothesis characters inserted run along the row: new[j] = min over k <= j of new[k] + (j - k) edits
        row = np.minimum.accumulate(new - inserted) + inserted
    return row


def nearest_lines_distance(hypothesis: str, lines: Sequence[Sequence[str]]) -> tuple[int, int]:
    """(Levenshtein distance, length) of the reference nearest to `hypothesis` among all `c_1 c_2 … c_n`
    (each c_i one of `lines[i]`, "" leaving line i out, the lines joined by single spaces); of several
    equally near, the longest."""
    target = np.frombuffer(hypothesis.encode("utf-32-le"), np.uint32)
    # Two rows: no line said yet (no space before the next line) and some said (a space before the next).
    silent, spoken = _PER_EDIT * np.arange(len(target) + 1, dtype=np.int64), None
    for choices in lines:
        said = [_extend(silent, c, target) for c in choices if c]
        if spoken is not None:
            said += [_extend(spoken, " " + c, target) for c in choices if c] + ([spoken] if "" in choices else [])
        if "" not in choices:
            silent = silent + _UNREACHABLE  # this line is always said
        spoken = np.minimum.reduce(said) if said else spoken
    score = int(silent[-1] if spoken is None else min(silent[-1], spoken[-1]))
    edits = -(-score // _PER_EDIT)
    return edits, edits * _PER_EDIT - score


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions cost 1)."""
    return nearest_lines_distance(a, [[b]])[0]


def character_error_rate(text, reference_text=None, lines: Sequence[Sequence[str]] | None = None) -> float | None:
    """CER of the words said in TEXT_OUT ids `text` against those of `reference_text` (`text_cer_drawn`)
    or, given the episode's `lines` (its `model_lines` choices), against the nearest reference they allow
    (`text_cer`)."""
    hypothesis = tokenizer.spoken_text(np.asarray(text).ravel()).lower()
    if lines is None:
        reference = tokenizer.spoken_text(np.asarray(reference_text).ravel()).lower()
        lines = [[reference]]
    lines = [[" ".join(c.lower().split()) for c in choices] for choices in lines]
    if not any(c for choices in lines for c in choices):
        return None
    edits, length = nearest_lines_distance(hypothesis, lines)
    return edits / length if length else 1.0


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
        "text_cer_drawn": None,
    }
    if reference_text is not None:
        out["text_agreement"] = float(np.mean(flags == text_active(reference_text)))
        out["text_cer_drawn"] = character_error_rate(text, reference_text)
        lines = annotations.get("model_lines")
        if lines and out["text_cer_drawn"] is not None:
            out["text_cer"] = character_error_rate(text, lines=[u["choices"] for u in lines])
        else:
            out["text_cer"] = out["text_cer_drawn"]
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
    own = scenarios.get(scenario).metrics
    text = np.asarray(text)
    if text.ndim != 2:
        raise ValueError(f"text must be TEXT_OUT ids [num_chunks, slots], got shape {text.shape}")
    out = common(annotations, text, s, reference_text=reference_text, energy=energy, reference_energy=reference_energy)
    return out | own(annotations, text, s)


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
