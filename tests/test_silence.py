"""A short seeded training run: its free-running behaviour is logged, and sampled on silence it stays silent.

Silence is the input a deployed model hears most. A model trained with PAD weighted down over-states
speaking; decoded with the calibrated PAD logit (`serve.calibrate_pad`) and the speak-or-stay-silent
rule it stays silent on silent input, as the data does, even when its text is sampled at temperature 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax.data import pipeline, render
from interaction_jax.data.scenarios.scoring import text_active
from interaction_jax.eval.probe import BehaviourProbe
from interaction_jax.eval.rollout import chunk_input, rollout_engine
from interaction_jax.model import step as step_lib
from interaction_jax.train import checkpoint, loop
from interaction_jax.train.metrics import read_jsonl
from tests.test_train import SMALL

pytestmark = pytest.mark.slow  # a training run (module fixture)

STEPS = 80
CHUNKS = 40
SILENT_RATE = 0.9  # the fraction of silent chunks the calibrated model keeps (the data: 1.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("silence") / "run"
    sets = [
        *SMALL,
        f"train.steps={STEPS}",
        "train.eval_every=40",
        "train.eval_episodes=4",
        "train.checkpoint_every=80",
        "data.scenarios=[turn_taking,cue_speak]",
        "data.weights=[1.0,1.0]",
    ]
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), sets))
    clips = pipeline.clip_source(cfg, progress=False)
    loop.train(cfg, workdir, progress=False, clips=clips, probe=BehaviourProbe(cfg, clips))
    return workdir


def _speaking_rate_on_silence(engine, sampling_cfg, seed: int) -> float:
    """The fraction of CHUNKS silent chunks in which the model says something, sampled as `sampling_cfg` says."""
    s = sampling_cfg.stream
    engine.sampling = step_lib.Sampling.from_config(sampling_cfg)  # traced: the tick does not recompile
    slot = engine.open(seed=seed)
    silence = [chunk_input(render.silent_payload(s, k), s) for k in range(CHUNKS)]
    text = [engine.tick({slot: chunk})[slot].text for chunk in silence]
    engine.close(slot)
    return float(text_active(np.stack(text)).mean())


def test_free_running_behaviour_is_logged_during_training(run):
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "behaviour"]
    assert [r["step"] for r in rows] == [40, 80]
    for r in rows:
        assert 0.0 <= r["turn_taking/reply_on_time"] <= 1.0 and 0.0 <= r["cue_speak/cue_hit"] <= 1.0
        assert r["gates"] == 8 and 0 <= r["gates_met"] <= 8  # turn_taking's, cue_speak's and the two for all
        assert "all/audio_agreement" in r and "delegate/delegate_hit" not in r


def test_sampled_on_silence_the_calibrated_model_stays_silent(run):
    cfg, params, step = checkpoint.load_params(run)
    assert step == STEPS
    engine = rollout_engine(cfg, params, CHUNKS)
    sampled = config_lib.override(cfg, ["serve.temperature=1.0"])
    rates = [_speaking_rate_on_silence(engine, sampled, seed) for seed in range(2)]
    assert max(rates) <= 1.0 - SILENT_RATE, rates
    # control: the measure sees speech when there is some — the same model told to speak whenever the
    # calibrated probability of anything but PAD exceeds 0.1% talks through the silence
    eager = config_lib.override(sampled, ["serve.speak_threshold=0.001"])
    assert _speaking_rate_on_silence(engine, eager, 0) > 0.5
