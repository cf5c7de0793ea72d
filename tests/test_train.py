"""The trainer in-process: optimizer, sharded state, gradient accumulation, checkpoints across meshes."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import sharding
from interaction_jax.config import AxisSizes, ConfigError
from interaction_jax.data import pipeline
from interaction_jax.model import step as model_step
from interaction_jax.testing import random_batch
from interaction_jax.train import checkpoint, metrics, optimizer
from interaction_jax.train import state as state_lib
from interaction_jax.train import step as step_lib

# A small model that still has every part (MoE over 4 experts, video, flow head): compiles fast.
SMALL = (
    "model.n_layers=1",
    "model.d_model=64",
    "model.expert_mlp=64",
    "model.flow_hidden=64",
    "model.flow_blocks=1",
    "train.window_chunks=5",
    "data.episode_chunks=45",
)


def small_config(*sets: str, mesh: str | None = None) -> config_lib.Config:
    cfg = config_lib.override(config_lib.preset("tiny"), [*SMALL, *sets])
    if mesh:
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(f"mesh_configs/{mesh}.yaml"))
    return config_lib.validate(cfg, jax.device_count(), purpose="train")


def expert_mesh(cfg: config_lib.Config) -> config_lib.Config:
    """data 2 × expert 4: every expert weight split four ways."""
    return dataclasses.replace(
        cfg, mesh=dataclasses.replace(cfg.mesh, name="cpu-expert4", axes=AxisSizes(data=2, expert=4))
    )


def test_learning_rate_warms_up_then_decays_to_its_floor():
    t = config_lib.TrainConfig(learning_rate=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    lr = optimizer.learning_rate(t)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-5)  # half-way down the cosine
    assert float(lr(110)) == pytest.approx(1e-4)


def test_weight_decay_skips_vectors():
    cfg = small_config()
    params = jax.eval_shape(lambda: model_step.init_params(cfg, jax.random.key(0)))
    mask = optimizer.decay_mask(params)
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['block0']['attn_norm']['scale']"] is False
    assert flat["['block0']['attn']['wq']"] is True
    assert any(v is False for k, v in flat.items() if "bias" in k)
    # decay really is masked: a zero gradient moves a decayed matrix but not a norm scale
    t = config_lib.TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0)
    opt = optimizer.make_optimizer(t)
    p = {"norm": {"scale": jnp.ones(3)}, "dense": {"kernel": jnp.ones((3, 3))}}
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, p), opt.init(p), p)
    assert float(jnp.abs(updates["norm"]["scale"]).max()) == 0.0
    assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.1 * 0.5)


def test_state_is_born_sharded_and_equals_the_unsharded_init(cpu8_state):
    cfg, state = cpu8_state
    leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    wq = leaves["['block0']['attn']['wq']"]
    assert "tensor" in wq.sharding.spec  # heads over the tensor axis
    assert state.params["block0"]["moe"]["w_up"].sharding.spec[0] == "expert"  # experts over the expert axis
    # Adam's moments are sharded like their parameter
    mu = state.opt_state[1][0].mu
    assert mu["block0"]["attn"]["wq"].sharding == wq.sharding
    # values: the same as the plain init with the same seed
    init_rng, _ = jax.random.split(jax.random.key(cfg.train.seed))
    plain = model_step.init_params(cfg, init_rng)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_averages_the_microbatch_gradients(monkeypatch):
    """The accumulation mechanics (strided split, mean of gradients, per-microbatch RNG, rows back in
    batch order), on a cheap stand-in loss: the model's own loss is tested in test_model.py."""

    def toy_loss(params, batch, rng, *, cfg):
        base = batch["audio"].astype(jnp.float32).mean(axis=(2, 3))[:, :4]
        text = batch["text"].astype(jnp.float32).mean(axis=1, keepdims=True)  # a second entry: rows must line up
        x = base + 1e-3 * text + jax.random.uniform(rng, ())
        per_row = jnp.sum((x @ params["w"]) ** 2, axis=1)
        rows = {"text_ce": per_row, "text_weight": jnp.ones_like(per_row), "correct": base[:, 0], "scored": base[:, 1]}
        return jnp.mean(per_row), {"loss": jnp.mean(per_row), "rows": rows}

    monkeypatch.setattr(step_lib.loss_lib, "loss_fn", toy_loss)
    cfg = small_config("train.grad_accum=2")
    params = {"w": jnp.linspace(-1.0, 1.0, 4 * 3).reshape(4, 3)}
    batch = random_batch(cfg.stream, cfg.train.window_chunks, 6, seed=3)
    rng = jax.random.key(7)
    grads, metrics_ = step_lib._grads(cfg, params, batch, rng)
    # The expectation, built without the code under test: microbatch i is rows i, i+2, i+4 (numpy
    # slicing) drawing fold_in(rng, i); the update is the gradient of their mean loss.
    parts = [{k: v[i::2] for k, v in batch.items()} for i in (0, 1)]

    def mean_loss(p):
        return sum(toy_loss(p, b, jax.random.fold_in(rng, i), cfg=cfg)[0] for i, b in enumerate(parts)) / 2

    expected = jax.grad(mean_loss)(params)
    np.testing.assert_allclose(grads["w"], expected["w"], rtol=1e-5, atol=1e-6 * float(np.abs(expected["w"]).max()))
    halves = [
        jax.grad(lambda p, b=b, i=i: toy_loss(p, b, jax.random.fold_in(rng, i), cfg=cfg)[0])(params)
        for i, b in enumerate(parts)
    ]
    assert not np.allclose(halves[0]["w"], halves[1]["w"], rtol=1e-3)  # the two halves really differ
    # microbatch i holds rows i, i+2, …; per-row stats come back in batch order
    micro = step_lib.microbatches(batch, 2)
    np.testing.assert_array_equal(micro["audio"][1][0], batch["audio"][1])
    want_rows = batch["audio"].astype(np.float32).mean(axis=(2, 3))[:, 0]
    np.testing.assert_allclose(metrics_["rows"]["correct"], want_rows, rtol=1e-6)


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"train\.grad_accum"):
        config_lib.validate(config_lib.override(config_lib.preset("tiny"), ["train.grad_accum=3"]))


@pytest.fixture(scope="module")
def clips():
    return pipeline.clip_source(small_config(), progress=False)


@pytest.fixture(scope="module")
def cpu8_state():
    cfg = small_config(mesh="cpu-8")
    return cfg, state_lib.init_state(cfg, optimizer.make_optimizer(cfg.train), sharding.make_mesh(cfg.mesh))


def _save(cfg, state, clips, workdir, steps=(1, 2)):
    """A non-trivial train state (params shifted by the step) saved at `steps` on cfg's mesh."""
    data = pipeline.ShardedBatches(cfg, clips=clips)
    ckpt = checkpoint.Checkpoints(workdir, keep=5)
    saved = {}
    shift = jax.jit(lambda st, s: st.replace(step=s, params=jax.tree.map(lambda x: x + s, st.params)))
    for s in steps:
        next(data)
        shifted = shift(state, jnp.int32(s))
        saved[s] = (jax.device_get(shifted), data.get_state())
        ckpt.save(s, shifted, data, cfg)
    ckpt.close()
    return saved


@pytest.fixture(scope="module")
def saved_on_cpu8(cpu8_state, clips, tmp_path_factory):
    """Checkpoints of steps 1 and 2 written on the cpu-8 mesh (data 2 × tensor 2 × expert 2)."""
    workdir = tmp_path_factory.mktemp("cpu8")
    return workdir, _save(*cpu8_state, clips, workdir)


@pytest.fixture
def workdir_copy(saved_on_cpu8, tmp_path):
    """A private copy of the saved workdir, for tests that damage it."""
    shutil.copytree(saved_on_cpu8[0], tmp_path / "run")
    return tmp_path / "run", saved_on_cpu8[1]


def _restore(cfg, clips, workdir):
    opt = optimizer.make_optimizer(cfg.train)
    mesh = sharding.make_mesh(cfg.mesh)
    data = pipeline.ShardedBatches(cfg, clips=clips)
    state, step = checkpoint.Checkpoints(workdir).restore(state_lib.abstract_state(cfg, opt, mesh), data, cfg)
    return state, step, data, mesh


def test_checkpoint_from_cpu8_restores_on_other_meshes(clips, saved_on_cpu8):
    workdir, saved = saved_on_cpu8
    want, data_state = saved[2]
    for cfg in (small_config(mesh="cpu-1"), expert_mesh(small_config())):
        state, step, data, mesh = _restore(cfg, clips, workdir)
        assert step == 2 and int(state.step) == 2
        assert data.get_state() == data_state  # the data iterator resumes where it was
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))
        # and it lands on the new mesh's shardings
        expected = state_lib.state_shardings(cfg, optimizer.make_optimizer(cfg.train), mesh)
        for a, s in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
            assert a.sharding.is_equivalent_to(s, a.ndim)
    wq = state.params["block0"]["attn"]["wq"]
    assert wq.sharding.mesh.shape["expert"] == 4


# orbax reads a step's arrays concurrently; when one fails, it leaves the others' read coroutines to the
# garbage collector, which reports each as an unraisable exception. Collected here, inside this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint_falls_back_with_a_warning(clips, workdir_copy):
    workdir, saved = workdir_copy
    cfg = small_config()
    files = sorted(
        (p for p in (workdir / "checkpoints" / "2" / "state").rglob("*") if p.is_file()),
        key=lambda p: -p.stat().st_size,
    )
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])  # the biggest data file
    with pytest.warns(checkpoint.CheckpointWarning, match=r"step 2 .* unreadable .* falling back to step 1"):
        state, step, data, _ = _restore(cfg, clips, workdir)
    assert step == 1
    np.testing.assert_array_equal(
        np.asarray(state.params["block0"]["attn"]["wq"]), saved[1][0].params["block0"]["attn"]["wq"]
    )
    assert data.get_state() == saved[1][1]
    assert (workdir / "corrupt_checkpoints" / "2").is_dir()
    assert checkpoint.Checkpoints(workdir).steps() == [1]
    gc.collect()


def test_checkpoint_of_another_model_is_refused(clips, saved_on_cpu8):
    with pytest.raises(ConfigError, match=r"different model: model\.d_model \(64 → 128\)"):
        _restore(small_config("model.d_model=128"), clips, saved_on_cpu8[0])


def test_load_params_reads_config_and_params(saved_on_cpu8):
    workdir, saved = saved_on_cpu8
    loaded_cfg, params, step = checkpoint.load_params(workdir)
    assert step == 2 and loaded_cfg == small_config(mesh="cpu-8")
    np.testing.assert_array_equal(np.asarray(params["text_head"]["kernel"]), saved[2][0].params["text_head"]["kernel"])
    assert len(params["text_head"]["kernel"].sharding.device_set) == 1


def test_a_checkpoint_from_before_hear_own_voice_is_read_as_the_model_that_heard_it():
    """`model.hear_own_voice` changes what a model computes, and its default went from on to off: a saved
    config without the key reads as on, for serving and for resuming, and one that states it keeps it."""
    cfg = small_config()
    saved = config_lib.to_dict(cfg)
    legacy = saved | {"model": {k: v for k, v in saved["model"].items() if k != "hear_own_voice"}}
    assert not cfg.model.hear_own_voice and checkpoint.config_of_saved(saved) == cfg
    assert checkpoint.config_of_saved(legacy).model.hear_own_voice
    with pytest.raises(ConfigError, match=r"different model: model\.hear_own_voice \(True → False\)"):
        checkpoint.check_compatible(legacy, cfg, Path("run"))
    checkpoint.check_compatible(legacy, small_config("model.hear_own_voice=true"), Path("run"))


def test_metrics_log_cuts_back_to_the_resumed_step(tmp_path):
    log = metrics.MetricsLog(tmp_path, tensorboard=False)
    for s in range(1, 6):
        log.write(s, "train", {"loss": 1.0 / s, "nan": float("nan")})
    log.close()
    assert metrics.read_jsonl(tmp_path / "metrics.jsonl")[0] == {"step": 1, "split": "train", "loss": 1.0, "nan": None}
    log = metrics.MetricsLog(tmp_path, resume_step=3, tensorboard=False)
    log.write(4, "train", {"loss": 9.0})
    log.close()
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 9.0)]


def test_tensorboard_writer_is_used_when_installed(tmp_path, monkeypatch):
    scalars = []

    class Writer:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append("closed")

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=Writer))
    log = metrics.MetricsLog(tmp_path)
    assert log.tb.logdir == str(tmp_path / "tensorboard")
    log.write(3, "heldout", {"loss": 2.5, "acc/time_speak": 0.25})
    log.close()
    assert scalars == [("heldout/loss", 2.5, 3), ("heldout/acc/time_speak", 0.25, 3), "closed"]


def test_sharded_batches_do_not_depend_on_the_process_split(clips):
    cfg = small_config("data.shards=2", "train.batch_size=8")
    whole = next(iter(pipeline.ShardedBatches(cfg, clips=clips)))
    halves = [next(iter(pipeline.ShardedBatches(cfg, clips=clips, process_index=p, process_count=2))) for p in (0, 1)]
    for k in whole:
        np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
    assert whole["task"].shape == (8,)
    with pytest.raises(ValueError, match=r"data\.shards=2 must be a multiple of the 4 processes"):
        pipeline.ShardedBatches(cfg, clips=clips, process_index=0, process_count=4)
    it = pipeline.ShardedBatches(cfg, clips=clips)
    with pytest.raises(ValueError, match=r"set data\.shards"):
        it.set_state(json.dumps([None]).encode())


def test_heldout_episodes_cycle_through_the_scenarios():
    cfg = small_config()
    names = [pipeline.heldout_scenario(cfg.data, i) for i in range(14)]
    assert names == list(config_lib.DEFAULT_SCENARIOS) * 2
    no_rep = config_lib.override(cfg, ["data.weights=[1,1,1,1,1,0,1]"])
    assert "rep_count" not in {pipeline.heldout_scenario(no_rep.data, i) for i in range(12)}


def test_train_refuses_an_unknown_scenario_before_it_starts(tmp_path):
    from interaction_jax.train import loop

    cfg = small_config("data.scenarios=[turn_taking, chitchat]", "data.weights=[1, 1]")  # sound as a config
    with pytest.raises(ConfigError, match=r"data\.scenarios: unknown scenario 'chitchat'"):
        loop.train(cfg, tmp_path / "run", clips=types.SimpleNamespace())  # no clip read, no compile
    assert not (tmp_path / "run").exists()


def test_stop_signal_flag(monkeypatch):
    import os
    import signal

    from interaction_jax.train import loop

    stop = loop.StopSignal()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received
    assert signal.getsignal(signal.SIGTERM) is not stop._handle
