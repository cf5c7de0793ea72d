"""The grain pipeline: deterministic batches, checkpointable iterators, per-process slices, disjoint splits."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream
from interaction_jax.data import corpus, pipeline, render
from interaction_jax.data.bank import LiveClips
from interaction_jax.model import step
from interaction_jax.train import loss as loss_lib
from tests.test_train import SMALL

CFG = config_lib.validate(
    config_lib.override(
        config_lib.preset("tiny"), ["data.episode_chunks=45", "train.window_chunks=15", "train.batch_size=3"]
    )
)


@pytest.fixture(scope="module")
def clips():
    return LiveClips()


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_have_the_stream_layout(clips):
    batch = next(iter(pipeline.batches(CFG, clips=clips)))
    b, length = 3, stream.window_length(CFG.stream, 15)
    assert batch["kind"].shape == (b, length)
    assert batch["audio"].shape == (b, stream.num_audio_entries(CFG.stream, 15), 2, 80)
    assert batch["patches"].shape == (b, stream.num_patch_entries(CFG.stream, 15), 40, 40, 3)
    assert batch["loss_mask"].shape == (b, length) and (batch["loss_mask"] == 1).all()
    # episode 0's three windows, in order, at their global positions
    starts = [stream.chunk_start(CFG.stream, k) for k in (0, 15, 30)]
    assert batch["position"][:, 0].tolist() == starts


def test_same_config_same_batches_and_restored_iterator_continues_exactly(clips):
    it = iter(pipeline.batches(CFG, clips=clips))
    first = take(it, 2)
    state = it.get_state()
    rest = take(it, 2)

    again = iter(pipeline.batches(CFG, clips=clips))
    assert_batches_equal(take(again, 2), first)

    resumed = iter(pipeline.batches(CFG, clips=clips))
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 2), rest)
    assert not np.array_equal(first[0]["audio"], rest[0]["audio"])  # the data does move on


@pytest.mark.slow
def test_worker_processes_are_deterministic_and_checkpointable(clips):
    ds = pipeline.batches(CFG, clips=clips, num_workers=2)
    it = iter(ds)
    take(it, 1)
    state = it.get_state()
    expected = take(it, 2)
    resumed = iter(pipeline.batches(CFG, clips=clips, num_workers=2))
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 2), expected)


def test_processes_take_disjoint_interleaved_episodes(clips):
    def positions_and_audio(process_index, process_count, n):
        ds = pipeline.windows(
            CFG, clips=clips, num_episodes=4, process_index=process_index, process_count=process_count
        )
        return [w["audio"] for w in take(iter(ds), n)]

    whole = positions_and_audio(0, 1, 12)  # episodes 0, 1, 2, 3 × 3 windows
    p0 = positions_and_audio(0, 2, 6)  # episodes 0, 2
    p1 = positions_and_audio(1, 2, 6)  # episodes 1, 3
    for got, want in ((p0, [0, 1, 2, 6, 7, 8]), (p1, [3, 4, 5, 9, 10, 11])):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, whole[w])


def test_splits_share_no_seed_sentence_or_voice():
    train = {pipeline.episode_seed(CFG.data, "train", i) for i in range(1000)}
    heldout = {pipeline.episode_seed(CFG.data, "heldout", i) for i in range(1000)}
    assert not train & heldout and len(train) == len(heldout) == 1000
    reseeded = dataclasses.replace(CFG.data, seed=1)
    assert not train & {pipeline.episode_seed(reseeded, "train", i) for i in range(1000)}
    assert not set(corpus.user_voices("train")) & set(corpus.user_voices("heldout"))
    lines = {
        split: {text for text, _ in corpus.bank_entries(split)} - set(corpus.model_lines())
        for split in ("train", "heldout")
    }
    assert lines["train"] and lines["heldout"] and not lines["train"] & lines["heldout"]


def test_heldout_needs_a_size_and_bad_arguments_are_named(clips):
    unknown = config_lib.override(CFG, ["data.scenarios=[turn_taking, chitchat]", "data.weights=[1, 1]"])
    with pytest.raises(config_lib.ConfigError, match="unknown scenario 'chitchat'"):
        pipeline.windows(unknown, clips=clips)  # nothing makes data from a mix it cannot make
    with pytest.raises(ValueError, match="num_episodes"):
        pipeline.windows(CFG, "heldout", clips=clips)
    with pytest.raises(ValueError, match="unknown split"):
        pipeline.episode_seed(CFG.data, "test", 0)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.windows(CFG, clips=clips, process_index=2, process_count=2)


def test_mixture_weights_pick_scenarios():
    only = dataclasses.replace(CFG.data, weights=(0, 0, 0, 1, 0, 0, 0))
    assert {pipeline.scenario_for(only, s) for s in range(50)} == {"time_speak"}
    uniform = {pipeline.scenario_for(CFG.data, s) for s in range(200)}
    assert uniform == set(config_lib.DEFAULT_SCENARIOS)


def test_loss_mask_removes_padding_from_the_loss(clips):
    # 50 chunks → the 4th window is 10/15 padding; a one-layer model (the mask is the loss's, not the model's)
    cfg = config_lib.override(CFG, [*SMALL, "data.episode_chunks=50"])
    ep = pipeline.make_episode(cfg, "train", 0, clips)
    win = render.episode_windows(ep, cfg.stream, 15)[3]
    assert 0 < win["loss_mask"].mean() < 0.5
    batch = {k: v[None] for k, v in win.items()}
    params = step.init_params(cfg, jax.random.key(0))
    loss = jax.jit(lambda b: loss_lib.loss_fn(params, b, jax.random.key(1), cfg=cfg)[1])
    base = loss(batch)
    padded = win["loss_mask"] == 0
    changed = dict(batch, text=np.where(padded[None] & (win["kind"] == stream.Kind.TEXT_OUT)[None], 65, batch["text"]))
    assert float(loss(changed)["text_ce"]) == pytest.approx(float(base["text_ce"]), rel=1e-6)
    unmasked = dict(changed, loss_mask=np.ones_like(batch["loss_mask"]))  # same shapes: no second compile
    assert float(loss(unmasked)["text_ce"]) != pytest.approx(float(base["text_ce"]), rel=1e-3)


def test_a_share_of_training_episodes_has_the_camera_off(clips):
    seeds = [pipeline.episode_seed(CFG.data, "train", i) for i in range(2000)]
    off = np.mean([pipeline.camera_off(CFG.data, s) for s in seeds])
    assert abs(off - CFG.data.camera_off) < 0.03 and CFG.data.camera_off == 0.2
    none = dataclasses.replace(CFG, data=dataclasses.replace(CFG.data, camera_off=0.0))
    assert not any(pipeline.camera_off(none.data, s) for s in seeds)

    def black(ep):
        return ep.frames is not None and not ep.frames.any()

    dark = {}
    for i in range(40):
        ep = pipeline.make_episode(CFG, "train", i, clips)
        seed = pipeline.episode_seed(CFG.data, "train", i)
        assert black(ep) == (pipeline.camera_off(CFG.data, seed) and ep.scenario != "rep_count"), (i, ep.scenario)
        dark[i] = black(ep)
        if ep.scenario == "cue_speak" and black(ep):
            assert {c["kind"] for c in ep.annotations["cues"]} == {"audio"}  # nothing visual to react to
    assert 0 < sum(dark.values()) < 40
    # held-out episodes always have the camera on, and camera_off=0 gives the old episodes back
    assert not any(black(pipeline.make_episode(CFG, "heldout", i, clips)) for i in range(14))
    for i in [i for i, d in dark.items() if not d][:3]:
        a, b = pipeline.make_episode(CFG, "train", i, clips), pipeline.make_episode(none, "train", i, clips)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.user_audio, b.user_audio)
