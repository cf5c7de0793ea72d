"""`interaction-jax eval` as a user runs it: the checkpoint's config, with the user's serve.* overrides on top."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from interaction_jax import config as config_lib
from interaction_jax.train import loop
from tests.test_train import SMALL

pytestmark = pytest.mark.slow  # a trained workdir (module fixture), CLI subprocesses


def _eval(workdir, out, *sets: str) -> subprocess.CompletedProcess:
    args = ["eval", "--workdir", str(workdir), "--out", str(out), "--episodes", "1", "--seeds", "1"]
    for s in sets:
        args += ["--set", s]
    cmd = [sys.executable, "-m", "interaction_jax.cli", *args, "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval_cli") / "run"
    sets = [*SMALL, "train.steps=1", "train.eval_every=0", "data.scenarios=[cue_speak]", "data.weights=[1.0]"]
    loop.train(config_lib.override(config_lib.preset("tiny"), sets), workdir, progress=False)
    return workdir


def _model_text(out) -> list[str]:
    episode = json.loads((out / "cue_speak" / "0" / "episode.json").read_text())
    return [c["text_out"] for c in episode["chunks"]]


def test_eval_honours_serve_overrides(workdir, tmp_path):
    greedy = _eval(workdir, tmp_path / "greedy")
    assert greedy.returncode == 0, greedy.stderr[-3000:]
    hot = _eval(workdir, tmp_path / "hot", "serve.temperature=1.5", "serve.calibrate_pad=false")
    assert hot.returncode == 0, hot.stderr[-3000:]
    for result, out, said in ((greedy, "greedy", "text greedy"), (hot, "hot", "text temperature 1.5, top-p 1")):
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        assert said in summary["sampling"] and said in result.stdout
        assert said in (tmp_path / out / "summary.md").read_text()
    assert "PAD logit uncorrected" in hot.stdout and "PAD logit +2.30" in greedy.stdout
    # the override reached the sampler: the untrained model's sampled text is not its greedy text
    assert _model_text(tmp_path / "greedy") != _model_text(tmp_path / "hot")


def test_eval_refuses_shape_keys(workdir, tmp_path):
    result = _eval(workdir, tmp_path / "bad", "model.d_model=32")
    assert result.returncode == 2
    assert "config error: model.d_model: the checkpoint fixes the model and stream" in result.stderr
    assert not (tmp_path / "bad").exists()
