"""The parameters' moving average (`train.ema_decay`): kept beside the trained parameters, never steering
them, and what evaluation and every checkpoint reader use."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import sharding
from interaction_jax.config import ConfigError
from interaction_jax.data import pipeline
from interaction_jax.train import checkpoint, loop, optimizer
from interaction_jax.train import state as state_lib
from interaction_jax.train.metrics import read_jsonl
from interaction_jax.train.step import moving_average
from tests.test_train import small_config

pytestmark = pytest.mark.slow  # two short training runs (module fixture)

DECAY = 0.5  # large steps of the average, so that three steps move it far from both ends
RUN = ("train.steps=3", "train.checkpoint_every=1", "train.eval_every=3", "train.eval_episodes=8")
RUN += ("train.behaviour_episodes=0", "train.warmup_steps=0")


def test_moving_average_is_the_decayed_sum_in_the_averages_dtype():
    average = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([4.0], jnp.bfloat16)}
    params = {"w": jnp.array([3.0, -2.0]), "b": jnp.array([0.0], jnp.bfloat16)}
    out = moving_average(average, params, 0.75)
    np.testing.assert_array_equal(out["w"], [1.5, 1.0])  # 0.75 · 1 + 0.25 · 3, 0.75 · 2 + 0.25 · (−2)
    assert out["b"].dtype == jnp.bfloat16 and float(out["b"][0]) == 3.0


def test_a_decay_of_one_or_more_is_refused():
    with pytest.raises(ConfigError, match=r"^train\.ema_decay: 1\.0 would never move the average"):
        small_config("train.ema_decay=1.0")
    assert small_config("train.ema_decay=0.999").train.ema_decay == 0.999


def test_the_average_is_sharded_as_the_parameters():
    cfg = small_config("train.ema_decay=0.9", mesh="cpu-8")
    opt = optimizer.make_optimizer(cfg.train)
    state = state_lib.init_state(cfg, opt, sharding.make_mesh(cfg.mesh))
    for a, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params), strict=True):
        assert a.sharding == p.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(p))  # it starts at the init
    plain = small_config(mesh="cpu-8")
    assert state_lib.state_shardings(plain, opt, sharding.make_mesh(cfg.mesh)).ema_params is None


@pytest.fixture(scope="module")
def clips():
    return pipeline.clip_source(small_config(), progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clips):
    """The same three steps trained without and with the average, a checkpoint after each."""
    out = {}
    for name, extra in (("plain", ()), ("average", (f"train.ema_decay={DECAY}",))):
        workdir = tmp_path_factory.mktemp(name) / "run"
        loop.train(small_config(*RUN, *extra), workdir, progress=False, clips=clips)
        out[name] = workdir
    return out


def _params(workdir, step, average=True):
    return jax.tree.leaves(jax.device_get(checkpoint.load_params(workdir, step, average=average)[1]))


def test_the_average_never_steers_training(runs):
    def losses(split):
        return [(r["step"], r["loss"]) for r in read_jsonl(runs[name] / "metrics.jsonl") if r["split"] == split]

    by_run = {}
    for name in runs:
        by_run[name] = losses("train"), losses("heldout")
    assert by_run["plain"][0] == by_run["average"][0]  # the same training losses, to the bit
    for step in (1, 2, 3):
        for a, b in zip(_params(runs["plain"], step), _params(runs["average"], step, average=False), strict=True):
            np.testing.assert_array_equal(a, b)
    # the held-out evaluation read the average (its loss is another), not the trained parameters
    assert by_run["plain"][1][0][0] == by_run["average"][1][0][0] == 3
    assert by_run["plain"][1][0][1] != by_run["average"][1][0][1]


def test_the_checkpoint_holds_the_running_average_and_readers_get_it(runs):
    workdir = runs["average"]
    for step in (2, 3):
        before, raw = _params(workdir, step - 1), _params(workdir, step, average=False)
        for a, b, p in zip(_params(workdir, step), before, raw, strict=True):
            np.testing.assert_allclose(a, DECAY * b + (1 - DECAY) * p, rtol=1e-6, atol=1e-7)
    # the control: the average is not the trained parameters, and a run without one reads those
    averaged, trained = _params(workdir, 3), _params(workdir, 3, average=False)
    assert any(not np.array_equal(a, p) for a, p in zip(averaged, trained, strict=True))
    for a, p in zip(_params(runs["plain"], 3), _params(runs["plain"], 3, average=False), strict=True):
        np.testing.assert_array_equal(a, p)


@pytest.mark.parametrize(
    ("trained", "resumed"), [("plain", f"train.ema_decay={DECAY}"), ("average", "train.ema_decay=0")]
)
def test_resuming_with_or_without_an_average_the_checkpoint_lacks_or_holds_is_refused(runs, clips, trained, resumed):
    cfg = small_config(*RUN, "train.steps=4", resumed)
    what = "holds no moving average" if trained == "plain" else "holds a moving average"
    with pytest.raises(ConfigError, match=rf"^train\.ema_decay: the checkpoint in .* {what}"):
        loop.train(cfg, runs[trained], progress=False, clips=clips)
    assert checkpoint.Checkpoints(runs[trained]).steps() == [1, 2, 3]  # nothing set aside as unreadable


def test_a_resumed_run_goes_on_from_the_saved_average(runs, clips, tmp_path):
    """Step 3 again, resumed from step 2's checkpoint: the same average to the bit (it was restored, not
    started again from the parameters)."""
    workdir = tmp_path / "run"
    shutil.copytree(runs["average"], workdir)
    shutil.rmtree(workdir / "checkpoints" / "3")
    loop.train(small_config(*RUN, f"train.ema_decay={DECAY}"), workdir, progress=False, clips=clips)
    for a, b in zip(_params(workdir, 3), _params(runs["average"], 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_config_round_trips_the_decay():
    cfg = small_config("train.ema_decay=0.99")
    assert config_lib.from_dict(config_lib.to_dict(cfg)).train.ema_decay == 0.99
