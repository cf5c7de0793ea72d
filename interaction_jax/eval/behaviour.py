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
  TEXT_OUT: SPEAK and EOT as word breaks, requests left out) against the words of the reference
  output, both lower-cased: Levenshtein distance / reference length (1.0 when it says nothing; may
  exceed 1 when it says much more). None when the reference says nothing.

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
