"""`interaction-jax demo`, the README's main job, end to end on a 12-second budget (a few steps of a one-layer
`tiny`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import demo
from interaction_jax import eval as eval_lib
from interaction_jax.audio import wav
from interaction_jax.stream import chunk_samples
from interaction_jax.train import checkpoint
from interaction_jax.train.metrics import read_jsonl


def _scored(value) -> bool:
    """A metric value that counts in a mean (None: not applicable; NaN: undefined for this episode)."""
    return value is not None and not math.isnan(value)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    # one episode and one rollout seed per scenario: the mean over seeds and episodes is test_eval's to check
    cmd = [
        sys.executable,
        "-m",
        "interaction_jax.cli",
        "demo",
        "--max-minutes",
        "0.2",
        "--episodes",
        "1",
        "--seeds",
        "1",
        # one layer: what is checked is the pipeline and its artefacts, which a deeper model only
        # makes slower to compile (47 s -> 24 s alone; the demo's own depth is in docs/results.md)
        "--set",
        "model.n_layers=1",
    ]
    # as a user runs it: one CPU device, not the test session's eight fake ones
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    env = dict(os.environ, XLA_FLAGS=flags)
    result = subprocess.run(
        [*cmd, "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=900, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # trained, checkpointed, logged
    steps = checkpoint.Checkpoints(out / "run").steps()
    assert steps and steps[-1] > 0
    train_rows = [r for r in read_jsonl(out / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert train_rows[-1]["step"] == steps[-1]
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\n  n_layers: 1\n" in (out / "run" / "config.yaml").read_text()  # --set took effect

    # every scenario streamed through microturn, with its artefacts
    cfg = config_lib.preset("tiny")
    summary = json.loads((out / "heldout" / "summary.json").read_text())
    assert summary["scenarios"] == list(config_lib.DEFAULT_SCENARIOS)
    assert [r["scenario"] for r in summary["rows"]] == list(config_lib.DEFAULT_SCENARIOS)
    samples = cfg.data.episode_chunks * chunk_samples(cfg.stream)
    for name in config_lib.DEFAULT_SCENARIOS:
        folder = out / "heldout" / name / "0"
        model, rate = wav.read_wav(folder / "model.wav")
        dialogue, _ = wav.read_wav(folder / "dialogue.wav")
        assert rate == cfg.stream.sample_rate and model.shape == (samples,) and dialogue.shape == (samples, 2)
        assert (folder / "timeline.png").read_bytes()[:4] == b"\x89PNG"
        episode = json.loads((folder / "episode.json").read_text())
        # the scenario's summary row is the mean over the rollout seeds this episode's file records
        row = next(r for r in summary["rows"] if r["scenario"] == name)
        seeds = episode["seed_metrics"]
        assert len(seeds) == summary["rollout_seeds"] and episode["metrics"] == seeds[0]
        assert row["metrics"] and row["metrics"].keys() == set().union(*seeds)
        for key, stat in row["metrics"].items():
            kept = [m[key] for m in seeds if _scored(m.get(key))]
            want = (sum(kept) if key.startswith("n_") else float(np.mean(kept))) if kept else None
            assert stat["n"] == len(kept) and stat["mean"] == pytest.approx(want), (name, key)
        assert row["reference"].keys() == episode["reference_metrics"].keys()
        for key, stat in row["reference"].items():  # one episode: its reference is the row's
            value = episode["reference_metrics"][key]
            assert stat["mean"] == (pytest.approx(value) if _scored(value) else None), (name, key)
        assert name in result.stdout  # the summary table is printed
    assert f"trained {steps[-1]} steps" in result.stdout
    # bounded by steps: a 12-second cap stops it short of them, and it says so
    assert steps[-1] < demo.DEMO_STEPS and "stopped short of" in result.stdout
    assert "by the 0.2-minute safety cap" in result.stderr
    # free-running behaviour was probed during training, plotted, and the gates are reported
    behaviour_rows = [r for r in read_jsonl(out / "run" / "metrics.jsonl") if r["split"] == "behaviour"]
    assert behaviour_rows and behaviour_rows[-1]["step"] == steps[-1] and "all/audio_agreement" in behaviour_rows[-1]
    assert (out / "behaviour.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["rollout_seeds"] == 1 and len(summary["gates"]) == len(eval_lib.GATES)  # --seeds 1 took effect
    assert "gates met." in result.stdout and "sampling: speaks when p(not PAD) > 0.5" in result.stdout
