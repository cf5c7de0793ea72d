"""Timelines of an interaction, chunk by chunk: who speaks when, what text each side sent, and markers.

One picture for data previews, live sessions (`talk`) and the demo's evaluation, so they all read the
same way: time runs left to right in seconds, user above, model below, text written at the chunk it
occupies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interaction_jax import tokenizer


def chunk_text(ids: np.ndarray) -> list[str]:
    """Per chunk, the readable text of its slots (PAD dropped, specials by name): int [n, slots] → n strings."""
    return [tokenizer.decode([int(i) for i in row if i != tokenizer.PAD]) for row in np.asarray(ids)]


def envelope(audio: np.ndarray, samples_per_bin: int) -> np.ndarray:
    """Peak absolute amplitude per bin of `samples_per_bin` samples (the tail bin may be shorter)."""
    audio = np.abs(np.asarray(audio, np.float32))
    n_bins = -(-audio.size // samples_per_bin)
    padded = np.zeros(n_bins * samples_per_bin, np.float32)
    padded[: audio.size] = audio
    return padded.reshape(n_bins, samples_per_bin).max(axis=1)


Curve = tuple[str, np.ndarray, np.ndarray]  # (label, times in s, values in [0, 1]): one line of the curves row


def timeline_figure(
    *,
    chunk_s: float,
    sample_rate: int,
    user_audio: np.ndarray,
    model_audio: np.ndarray,
    text_in: np.ndarray | None = None,
    text_out: np.ndarray | None = None,
    markers: Sequence[tuple[float, str]] = (),
    title: str = "",
    curves: Sequence[Curve] = (),
    curves_label: str = "p(speak)",
    threshold: float | None = None,
):
    """The timeline as a matplotlib `Figure` (not attached to pyplot: a notebook shows it, a script saves it).

    user_audio / model_audio: float samples on one time line; text_in / text_out: int [num_chunks, slots]
    token ids per chunk; markers: (time_s, label) drawn as vertical lines (cues, barge-ins, targets);
    curves: lines drawn as steps in a row of their own under the model's text (e.g. the speak probability
    slot by slot), with `threshold` as a dashed line.
    """
    from matplotlib.figure import Figure

    duration = max(user_audio.size, model_audio.size) / sample_rate
    bin_samples = max(1, sample_rate // 100)  # 10 ms bins
    n_rows = 5 if curves else 4
    fig = Figure(figsize=(max(8.0, duration * 1.2), 6.0 + 1.5 * (n_rows - 4)))
    axes = fig.subplots(n_rows, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 1] + [2] * (n_rows - 4)})
    rows = [
        (axes[0], "user audio", user_audio, "tab:blue"),
        (axes[2], "model audio", model_audio, "tab:orange"),
    ]
    for ax, label, audio, colour in rows:
        env = envelope(audio, bin_samples)
        t = np.arange(env.size) * bin_samples / sample_rate
        ax.fill_between(t, -env, env, color=colour, linewidth=0)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
    for ax, label, ids in ((axes[1], "user text", text_in), (axes[3], "model text", text_out)):
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.set_ylim(0, 1)
        if ids is None:
            continue
        for k, text in enumerate(chunk_text(ids)):
            if text:
                ax.text((k + 0.5) * chunk_s, 0.5, text, ha="center", va="center", fontsize=7, rotation=90)
    if curves:
        ax = axes[4]
        for label, times, values in curves:
            ax.step(times, values, where="post", label=label)
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(curves_label, rotation=0, ha="right", va="center")
        ax.legend(fontsize=7, loc="upper left")
    n_chunks = int(np.ceil(duration / chunk_s))
    for ax in axes:
        for k in range(n_chunks + 1):
            ax.axvline(k * chunk_s, color="0.9", linewidth=0.5, zorder=0)
        for time_s, _ in markers:
            ax.axvline(time_s, color="tab:red", linewidth=1.0)
    for time_s, label in markers:
        axes[0].text(time_s, 0.95, label, color="tab:red", fontsize=7, va="top", ha="left")
    axes[-1].set_xlabel("stream time (s)")
    axes[-1].set_xlim(0, duration)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return fig


def plot_timeline(path: str | Path, **timeline) -> Path:
    """Write `timeline_figure(**timeline)` to `path` as a PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeline_figure(**timeline).savefig(path, dpi=100)
    return path
