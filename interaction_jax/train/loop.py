"""The training loop: resume, step, log, evaluate, checkpoint, and stop cleanly on SIGTERM or a time limit.

    result = train(cfg, "runs/tiny")

Everything a step sees is a function of the step: the batch (the grain iterator state is checkpointed
with the parameters) and the RNG (`fold_in(seed, step)`). A run killed at any point and restarted from
its workdir therefore repeats exactly the steps it would have taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from interaction_jax import config as config_lib
from interaction_jax import sharding
from interaction_jax.config import Config
from interaction_jax.data import pipeline, render, scenarios
from interaction_jax.data.episode import ClipSource
from interaction_jax.train import checkpoint, optimizer
from interaction_jax.train import state as state_lib
from interaction_jax.train import step as step_lib
from interaction_jax.train.metrics import MetricsLog, read_jsonl


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int  # last step trained
    loss: float  # mean training loss over the last logged interval
    heldout_loss: float | None  # at the last held-out evaluation (None: never evaluated)
    tokens_per_s: float | None  # over the steps this call ran, compilation excluded (None: too few steps)
    seconds: float  # wall time of this call
    workdir: str
    preempted: bool  # stopped by SIGTERM or the time limit before train.steps


class StopSignal:
    """Turns SIGTERM into a flag the loop checks between steps (the default action would lose the run)."""

    def __init__(self):
        self.received = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.received = True


def _all_agree(flag: bool) -> bool:
    """True on every process if it is True on any: all processes must stop (and save) at the same step."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


class HeldOut:
    """A fixed held-out set (the same batches at every evaluation) and its per-task report."""

    def __init__(self, cfg: Config, clips: ClipSource, mesh, shardings):
        self.cfg, self.mesh = cfg, mesh
        data = pipeline.ShardedBatches(
            cfg,
            "heldout",
            clips=clips,
            num_episodes=cfg.train.eval_episodes,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.batches = list(data)
        if not self.batches:
            raise config_lib.ConfigError(
                "train.eval_episodes",
                f"{cfg.train.eval_episodes} held-out episodes do not fill one batch of {cfg.train.batch_size}",
                "raise train.eval_episodes, or set train.eval_every=0",
            )
        self.step_fn = step_lib.jit_eval_step(cfg, mesh, shardings, self.batches[0])

    def evaluate(self, params) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)
        by_task: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(2))
        for batch in self.batches:
            m = self.step_fn(params, sharding.shard_batch(batch, self.mesh, self.cfg.mesh))
            m = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), m)
            for k in ("loss", "flow", "vap"):
                if k in m:  # vap: only with train.vap_weight on
                    sums[k] += float(m[k])
            rows = m["rows"]
            sums["ce"] += rows["text_ce"].sum()
            sums["weight"] += rows["text_weight"].sum()
            for task, correct, scored in zip(m["task"], rows["correct"], rows["scored"], strict=True):
                by_task[int(task)] += (correct, scored)
        n = len(self.batches)
        out = {"loss": sums["loss"] / n, "flow": sums["flow"] / n, "text_ce": sums["ce"] / max(sums["weight"], 1e-6)}
        if "vap" in sums:
            out["vap"] = sums["vap"] / n
        correct = sum(v[0] for v in by_task.values())
        scored = sum(v[1] for v in by_task.values())
        out["text_acc"] = correct / max(scored, 1)
        for task, (c, s) in sorted(by_task.items()):
            out[f"acc/{scenarios.names()[task]}"] = c / max(s, 1)
        return out


def window_warning(cfg: Config) -> str | None:
    """What is wrong with windows that do not hold exactly one episode: shorter, they train a model that
    behaves differently when served; longer, the rest of every window is padding. None when a window
    holds a whole episode."""
    window, episode = cfg.train.window_chunks, cfg.data.episode_chunks
    if window > episode:
        padding = render.num_windows(episode, window) * window - episode
        return (
            f"train.window_chunks={window} is longer than an episode (data.episode_chunks={episode}): "
            f"{padding} chunks of every window are padding that teaches nothing ({padding / window:.0%} of "
            "each step's tokens); set train.window_chunks to the episode length, or data.episode_chunks up"
        )
    if window == episode:
        return None
    return (
        f"train.window_chunks={window} is shorter than an episode "
        f"(data.episode_chunks={episode}): every window after an episode's first starts "
        "with an empty cache at a later position, a context no served session has (it keeps every chunk "
        "since position 0), so what the model learns late in a window it does not do when served "
        "(docs/data.md, Windows); set train.window_chunks to the episode length"
    )


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    progress: bool = True,
    max_seconds: float | None = None,
    profile_steps: int = 0,
    clips: ClipSource | None = None,
    probe: Callable[[Any], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `cfg` in `workdir` up to `train.steps`, resuming from the workdir's newest readable checkpoint.

    Stops early, with a complete checkpoint, on SIGTERM or after `max_seconds`. `profile_steps` > 0
    writes a JAX profiler trace of that many steps (after compilation) to `<workdir>/profile`.
    `probe(params)`, when given, runs at every held-out evaluation and its values are logged as split
    "behaviour" (the free-running `eval.probe.BehaviourProbe`; training knows nothing of serving).
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    t = cfg.train
    config_lib.validate(cfg, jax.device_count(), purpose="train")
    scenarios.check_mix(cfg)  # before the clip bank and the compile
    if warning := window_warning(cfg):
        logging.warning(warning)
    mesh = sharding.make_mesh(cfg.mesh)
    opt = optimizer.make_optimizer(t)
    shardings = state_lib.state_shardings(cfg, opt, mesh)
    clips = clips if clips is not None else pipeline.clip_source(cfg, progress and jax.process_index() == 0)
    data = pipeline.ShardedBatches(
        cfg, "train", clips=clips, process_index=jax.process_index(), process_count=jax.process_count()
    )
    ckpt = checkpoint.Checkpoints(workdir, keep=t.keep_checkpoints)
    restored = ckpt.restore(state_lib.abstract_state(cfg, opt, mesh), data, cfg)
    if restored is None:
        state, start = state_lib.init_state(cfg, opt, mesh), 0
    else:
        state, start = restored
        logging.warning("resuming from step %d in %s", start, workdir)
    if jax.process_index() == 0:
        (workdir / "config.yaml").write_text(config_lib.dump_yaml(cfg))
    log = MetricsLog(workdir, resume_step=start)
    heldout = HeldOut(cfg, clips, mesh, shardings) if t.eval_every else None

    # Profile from the second step this call runs (the first one compiles), or the only one there is.
    profile_start = min(start + 1, t.steps - 1) if profile_steps else -1
    profile_stop = min(profile_start + profile_steps, t.steps)
    stop = StopSignal()
    step, preempted, last_loss, heldout_loss = start, False, float("nan"), None
    interval: list[dict] = []
    run_tokens, run_seconds = 0, 0.0
    bar = tqdm(total=t.steps, initial=start, disable=not progress or jax.process_index() != 0, desc="train")
    with contextlib.closing(ckpt), contextlib.closing(log), contextlib.closing(bar), stop.installed():
        step_fn = None
        batch = next(data) if step < t.steps else None
        tokens_per_step = 0 if batch is None else int(np.prod(batch["kind"].shape)) * jax.process_count()
        tick = time.perf_counter()
        while step < t.steps:
            if step_fn is None:
                step_fn = step_lib.jit_train_step(cfg, opt, mesh, shardings, batch)
            if step == profile_start:
                jax.profiler.start_trace(str(workdir / "profile"))
            state, metrics = step_fn(state, sharding.shard_batch(batch, mesh, cfg.mesh))
            step += 1
            interval.append(metrics)
            out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
            stopping = _all_agree(stop.received or out_of_time) and step < t.steps
            if profile_steps and profile_start < step and (step == profile_stop or stopping):
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                logging.warning("profile of steps %d–%d written to %s", profile_start + 1, step, workdir / "profile")
            if step % t.log_every == 0 or step == t.steps or stopping:
                values = {k: float(np.mean([float(m[k]) for m in interval])) for k in interval[0]}
                now = time.perf_counter()
                if step - len(interval) > start:  # the first interval includes compilation: not a rate
                    run_tokens += tokens_per_step * len(interval)
                    run_seconds += now - tick
                    values["tokens_per_s"] = tokens_per_step * len(interval) / (now - tick)
                tick, interval = now, []
                last_loss = values["loss"]
                if not np.isfinite(last_loss):
                    raise FloatingPointError(
                        f"the training loss became {last_loss} by step {step}; lower train.learning_rate "
                        f"(now {t.learning_rate}) or train.grad_clip, and restart (the last checkpoint is kept)"
                    )
                log.write(step, "train", values)
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{values.get('tokens_per_s', 0):,.0f}")
            bar.update(1)
            evaluate = heldout is not None and (step % t.eval_every == 0 or step == t.steps or stopping)
            if evaluate:
                result = heldout.evaluate(state.eval_params())
                heldout_loss = result["loss"]
                log.write(step, "heldout", result)
                if probe is not None and jax.process_count() == 1:
                    log.write(step, "behaviour", probe(state.eval_params()))
                tick = time.perf_counter()  # evaluation time is not training time
            if step % t.checkpoint_every == 0 or step == t.steps or stopping:
                ckpt.save(step, state, data, cfg)
            if stopping:
                preempted = True
                reason = "SIGTERM" if stop.received else f"the {max_seconds:.0f} s time limit"
                logging.warning("stopping at step %d on %s; checkpoint saved in %s", step, reason, workdir)
                break
            if step < t.steps:
                batch = next(data)
    if np.isnan(last_loss):  # nothing trained in this call: report the run's last logged values
        records = read_jsonl(log.path)
        train_rows = [r for r in records if r["split"] == "train"]
        held_rows = [r for r in records if r["split"] == "heldout"]
        last_loss = train_rows[-1]["loss"] if train_rows else float("nan")
        heldout_loss = held_rows[-1]["loss"] if held_rows else None
    return TrainResult(
        step=step,
        loss=last_loss,
        heldout_loss=heldout_loss,
        tokens_per_s=run_tokens / run_seconds if run_seconds else None,
        seconds=time.perf_counter() - started,
        workdir=str(workdir),
        preempted=preempted,
    )
