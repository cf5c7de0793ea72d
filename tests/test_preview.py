"""`interaction-jax data preview`: the files it writes hold the episode it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.audio import wav
from interaction_jax.data import preview, render, scenarios
from interaction_jax.data.bank import LiveClips

CFG = config_lib.validate(config_lib.preset("tiny"))


@pytest.fixture(scope="module")
def clips():
    return LiveClips()


def test_preview_files_hold_the_episode(tmp_path, clips):
    ep, paths = preview.write_preview(CFG, "time_speak", 5, tmp_path, clips)
    user, rate = wav.read_wav(paths["user"])
    assert rate == 16000 and user.shape == ep.user_audio.shape
    np.testing.assert_allclose(user, ep.user_audio, atol=1 / 32768)
    mix, _ = wav.read_wav(paths["mix"])
    assert mix.shape == (ep.user_audio.size, 2)
    np.testing.assert_allclose(mix[:, 1], ep.model_audio, atol=1 / 32768)
    summary = json.loads(paths["episode"].read_text())
    assert summary["scenario"] == "time_speak" and summary["seed"] == 5
    assert summary["annotations"]["requests"] == ep.annotations["requests"]
    payloads, _ = render.chunk_payloads(ep, CFG.stream)
    said = "".join(c["text_out"] for c in summary["chunks"])
    assert said.replace("<eot>", "").strip() and len(summary["chunks"]) == len(payloads) == 50
    assert paths["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert 1 <= len(frames) <= preview.MAX_FRAMES


def test_markers_come_from_the_annotations():
    def markers(name, annotations):
        return scenarios.get(name).event_markers(annotations, CFG.stream)

    assert markers("cue_speak", {"cues": [{"kind": "audio", "time": 3.5}]}) == [(3.5, "audio cue")]
    assert markers("interruption", {"barge_in": 2.0, "cut": 2.2}) == [(2.0, "barge-in")]
    assert markers("time_speak", {"requests": [{"n": 4, "target_time": 6.0}]}) == [(6.0, "target 4 s")]
    assert markers("rep_count", {"completions": [3.0, 5.5]}) == [(3.0, "rep 1"), (5.5, "rep 2")]
    assert markers("turn_taking", {"replies": [{"user_end": 1.0, "onset_chunk": 6}]}) == []


@pytest.mark.slow
def test_cli_preview_builds_the_bank_and_writes_files(tmp_path):
    env = dict(os.environ, INTERACTION_JAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "interaction_jax.cli", "data", "preview", "--scenario", "rep_count", "--seed", "2"]
    result = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "rep_count seed 2 (train): 50 chunks" in result.stdout
    summary = json.loads((tmp_path / "out" / "episode.json").read_text())
    assert summary["annotations"]["count"] >= 1
    assert any((tmp_path / "cache" / "clips").iterdir())
    bad = subprocess.run(
        [sys.executable, "-m", "interaction_jax.cli", "data", "preview", "--scenario", "chitchat"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown scenario 'chitchat'" in bad.stderr
    assert Path(tmp_path / "out" / "timeline.png").exists()
