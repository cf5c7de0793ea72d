"""The decision curves of `probing.decision`: the speak probability slot by slot, free-running and teacher-forced."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream, timeline, tokenizer
from interaction_jax.data import pipeline, render
from interaction_jax.eval import report
from interaction_jax.eval.rollout import rollout_engine
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib
from interaction_jax.probing import decision
from interaction_jax.testing import microturn_block
from tests.test_train import SMALL

# Added to the PAD logit: puts an untrained model's p(speak) near ½, where the slots' logits move it most.
PAD_BIAS = 5.5


@pytest.fixture(scope="module")
def setup():
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), [*SMALL, "data.episode_chunks=45"]))
    params = step_lib.init_params(cfg, jax.random.key(3))
    episode = report.eval_episode(cfg, "turn_taking", 0, pipeline.clip_source(cfg, progress=False))
    return cfg, params, episode


def test_teacher_forced_reads_the_slot_each_hidden_state_predicts(setup):
    """The one-window curve equals `microturn` fed the episode chunk by chunk with the reference output
    (teacher forcing through the serving path): the logits at token t-1 are the decision of slot t."""
    cfg, params, episode = setup
    s = cfg.stream
    curve = decision.teacher_forced(cfg, params, episode, pad_bias=PAD_BIAS)
    payloads, _ = render.chunk_payloads(episode, s)
    fn = step_lib.jit_microturn(cfg)
    cache = kv_cache.init_cache(cfg.model, 1, stream.window_length(s, episode.num_chunks))
    served = []
    for p in payloads:
        out, cache = fn(
            params,
            cache,
            microturn_block(s, [p], teacher=True),
            jax.random.key(0),
            step_lib.Sampling(pad_bias=PAD_BIAS),
        )
        served.append(np.asarray(out["speak_prob"][0]))
    served = np.stack(served)
    assert curve.speak_prob.shape == served.shape == (episode.num_chunks, s.text_out_slots)
    assert served.std() > 0.05  # the slots differ, so a slot read one off would not match
    np.testing.assert_allclose(curve.speak_prob, served, atol=2e-4)
    # the control: the same curve one slot late does not match
    late = np.concatenate([served.ravel()[1:], served.ravel()[-1:]]).reshape(served.shape)
    assert np.abs(curve.speak_prob - late).max() > 1e-2
    np.testing.assert_array_equal(curve.text, np.stack([p.text_out for p in payloads]))


def test_free_running_curve_is_the_decision_the_engine_took(setup):
    """Greedy, a slot speaks exactly where its p(speak) exceeds the threshold; other sampling settings
    reuse the engine's compiled tick."""
    cfg, params, episode = setup
    engine = rollout_engine(cfg, params, episode.num_chunks)
    runs = {}
    for threshold in (0.45, 0.6):
        sampling = decision.sampling(cfg, pad_bias=PAD_BIAS, speak_threshold=threshold)
        runs[threshold], ro = decision.free_running(cfg, params, episode, sampling=sampling, engine=engine)
        curve = runs[threshold]
        np.testing.assert_array_equal(curve.said, curve.speak_prob > threshold)
        np.testing.assert_array_equal(curve.text, ro.text)
        assert curve.slot_times[:5].tolist() == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])  # 4 slots a chunk
    assert runs[0.45].said.sum() > runs[0.6].said.sum() > 0  # the threshold reached the decision
    assert engine.compilations == 1
    assert float(decision.sampling(cfg, temperature=0.7).temperature) == pytest.approx(0.7)


def test_timeline_figure_draws_the_curves_row(setup):
    cfg, params, episode = setup
    curve = decision.teacher_forced(cfg, params, episode)
    fig = timeline.timeline_figure(
        chunk_s=curve.chunk_s,
        sample_rate=cfg.stream.sample_rate,
        user_audio=episode.user_audio,
        model_audio=episode.model_audio,
        text_out=curve.text,
        curves=[(curve.label, curve.slot_times, curve.speak_prob.ravel())],
        threshold=0.5,
    )
    assert len(fig.axes) == 5
    (line,) = [ln for ln in fig.axes[4].get_lines() if ln.get_label() == "teacher-forced"]
    np.testing.assert_array_equal(line.get_ydata(), curve.speak_prob.ravel())
    texts = [t.get_text() for t in fig.axes[3].texts]
    assert texts and all(t for t in texts) and any(tokenizer.decode([tokenizer.SPEAK]) in t for t in texts)
    plain = timeline.timeline_figure(
        chunk_s=curve.chunk_s,
        sample_rate=cfg.stream.sample_rate,
        user_audio=episode.user_audio,
        model_audio=episode.model_audio,
    )
    assert len(plain.axes) == 4
