"""`interaction-jax data preview`: one episode as files a person can look at and listen to.

Writes user.wav, model.wav, mix.wav (stereo: user left, model right), timeline.png, a few frames as
PNGs, and episode.json (the annotations and the text of every chunk as the model will see it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from interaction_jax import stream, timeline
from interaction_jax.audio import wav
from interaction_jax.config import Config
from interaction_jax.data import render, scenarios
from interaction_jax.data.episode import ClipSource, Episode, ScenarioContext, Split, frame_times
from interaction_jax.stream import chunk_seconds

MAX_FRAMES = 6
FRAME_SCALE = 4  # 80×80 frames are hard to see; nearest-neighbour upscaling keeps the pixels honest


def save_frames(frames: np.ndarray, times: np.ndarray, folder: Path) -> list[Path]:
    """Up to MAX_FRAMES evenly spaced frames as PNGs named by their stream time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(MAX_FRAMES, len(frames))).round().astype(int))
    paths = []
    for i in picks:
        big = np.repeat(np.repeat(frames[i], FRAME_SCALE, axis=0), FRAME_SCALE, axis=1)
        path = folder / f"frame_{times[i]:06.2f}s.png"
        plt.imsave(path, big)
        paths.append(path)
    return paths


def write_preview(
    cfg: Config, scenario: str, seed: int, out: str | Path, clips: ClipSource, split: Split = "train"
) -> tuple[Episode, dict[str, Path]]:
    """Make episode (scenario, seed) and write its preview files into `out`; return it and the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.stream
    ctx = ScenarioContext(stream=s, clips=clips, split=split, num_chunks=cfg.data.episode_chunks)
    ep = scenarios.make_episode(scenario, seed, ctx)
    payloads, stats = render.chunk_payloads(ep, s)
    text_in = np.stack([p.text_in for p in payloads])
    text_out = np.stack([p.text_out for p in payloads])

    paths = {
        "user": out / "user.wav",
        "model": out / "model.wav",
        "mix": out / "mix.wav",
        "episode": out / "episode.json",
    }
    wav.write_wav(paths["user"], ep.user_audio, s.sample_rate)
    wav.write_wav(paths["model"], ep.model_audio, s.sample_rate)
    wav.write_wav(paths["mix"], np.stack([ep.user_audio, ep.model_audio], axis=1), s.sample_rate)
    paths["timeline"] = timeline.plot_timeline(
        out / "timeline.png",
        chunk_s=chunk_seconds(s),
        sample_rate=s.sample_rate,
        user_audio=ep.user_audio,
        model_audio=ep.model_audio,
        text_in=text_in,
        text_out=text_out,
        markers=scenarios.get(scenario).event_markers(ep.annotations, s),
        title=f"{scenario} · seed {seed} · {split}",
    )
    if ep.frames is not None:
        frames = save_frames(ep.frames, frame_times(s, ep.num_chunks), out / "frames")
        paths.update({f"frame{i}": p for i, p in enumerate(frames)})
    chunks = [
        {"chunk": k, "text_in": a, "text_out": b, "frame": stream.chunk_has_frame(s, k)}
        for k, (a, b) in enumerate(zip(timeline.chunk_text(text_in), timeline.chunk_text(text_out), strict=True))
    ]
    summary = {
        "scenario": scenario,
        "seed": seed,
        "split": split,
        "num_chunks": ep.num_chunks,
        "chunk_ms": s.chunk_ms,
        "render": {"delayed_events": stats.delayed_events, "dropped_tokens": stats.dropped_tokens},
        "annotations": ep.annotations,
        "chunks": chunks,
    }
    paths["episode"].write_text(json.dumps(summary, indent=1))
    return ep, paths
