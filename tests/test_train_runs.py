"""The trainer as a user runs it: `interaction-jax train` processes killed, stopped, resumed, multi-host.

Each run is a real subprocess of the CLI on a small model (see test_train.SMALL). They share the
suite's JAX compilation cache, so only the first run of each program compiles.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interaction_jax.train import checkpoint
from interaction_jax.train.metrics import read_jsonl
from tests.test_train import SMALL

pytestmark = pytest.mark.slow  # training subprocesses

STEPS = 8
RUN = (
    *SMALL,
    f"train.steps={STEPS}",
    "train.warmup_steps=2",  # with the default 100, 8 steps barely move the weights: "it learns" is then noise
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.eval_every=4",
    "train.eval_episodes=2",
    "train.behaviour_episodes=0",  # the free-running probe has its own test (test_silence.py)
    "data.shards=2",  # the same global batches for 1 process × 8 devices and 2 processes × 4
)


@pytest.fixture(scope="module")
def env():
    # the suite's compilation cache (tests/conftest.py), inherited through os.environ
    return dict(os.environ, JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def train_command(workdir: Path, *extra: str) -> list[str]:
    sets = [a for s in RUN for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "interaction_jax.cli",
        "train",
        "--workdir",
        str(workdir),
        "--no-progress",
        *sets,
        *extra,
    ]


def train_losses(workdir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def saved_steps(workdir: Path) -> list[int]:
    """The finished checkpoint steps (orbax renames a step's folder to its number once it is complete)."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


def start_and_signal(
    cmd: list[str], env: dict, workdir: Path, after_steps: int, sig: int, after_checkpoint: int = 0
) -> subprocess.Popen:
    """Start a run and send `sig` once metrics.jsonl shows `after_steps` training steps (and, with
    `after_checkpoint`, once the checkpoint of that step is complete)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(train_losses(workdir)) < after_steps or after_checkpoint not in [0, *saved_steps(workdir)]:
        assert proc.poll() is None, f"the run ended before step {after_steps}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env):
    """An uninterrupted run: 1 process × 8 devices."""
    workdir = tmp_path_factory.mktemp("baseline")
    result = run(train_command(workdir), env)
    assert f"done: step {STEPS}" in result.stdout
    return workdir


def test_baseline_logs_every_step_and_evaluates(baseline):
    losses = train_losses(baseline)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    assert losses[-1][1] < losses[0][1]  # it learns
    held = [r for r in read_jsonl(baseline / "metrics.jsonl") if r["split"] == "heldout"]
    assert [r["step"] for r in held] == [4, 8]
    assert set(held[0]) >= {"loss", "text_ce", "text_acc", "acc/turn_taking", "acc/backchannel"}
    assert checkpoint.Checkpoints(baseline).steps() == [4, 6, 8]  # the last 3 kept
    assert (baseline / "config.yaml").read_text().startswith("model:")


def test_killed_stopped_and_resumed_run_repeats_the_uninterrupted_losses(baseline, tmp_path, env):
    workdir = tmp_path / "run"
    # SIGKILL once the step-2 checkpoint is complete, at a random step of 2–4 (the step-4 save may be
    # under way): the restart must resume from the newest complete checkpoint, not from step 0.
    kill_at = random.Random(os.environ.get("PYTEST_XDIST_WORKER", "seed")).randint(2, 4)
    proc = start_and_signal(train_command(workdir), env, workdir, kill_at, signal.SIGKILL, after_checkpoint=2)
    assert proc.returncode == -signal.SIGKILL
    resumed_at, logged = saved_steps(workdir)[-1], len(train_losses(workdir))
    assert resumed_at >= 2

    # SIGTERM on the restarted run once it has logged past the killed run's rows (it cuts the log back
    # to its checkpoint): it stops at a step boundary with a complete checkpoint
    proc = start_and_signal(train_command(workdir), env, workdir, logged + 1, signal.SIGTERM)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from step {resumed_at} " in err  # a resume, not a restart from step 0
    stopped = train_losses(workdir)[-1][0]
    assert f"stopped early (checkpoint saved): step {stopped}" in out
    assert resumed_at < stopped < STEPS and checkpoint.Checkpoints(workdir).steps()[-1] == stopped
    _, params, step = checkpoint.load_params(workdir)
    assert step == stopped and params["text_head"]["kernel"].shape[0] == 64

    result = run(train_command(workdir, "--profile", "2"), env)
    assert f"done: step {STEPS}" in result.stdout
    assert f"resuming from step {stopped} " in result.stderr
    assert train_losses(workdir) == train_losses(baseline)  # bit for bit, step for step
    assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace written"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_of_eight(baseline, tmp_path, env):
    workdir = tmp_path / "run"
    address = f"127.0.0.1:{_free_port()}"
    # four devices a process, and the suite's other compiler flags (tests/conftest.py) kept
    flags = env["XLA_FLAGS"].replace("device_count=8", "device_count=4")
    assert "--xla_force_host_platform_device_count=4" in flags
    env4 = dict(env, XLA_FLAGS=flags)
    procs = [
        subprocess.Popen(
            train_command(
                workdir,
                "--coordinator-address",
                address,
                "--num-processes=2",
                f"--process-id={i}",
            ),
            env=env4,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    multi, single = train_losses(workdir), train_losses(baseline)
    assert [s for s, _ in multi] == [s for s, _ in single]
    # Not bit-equal: gloo's cross-process all-reduce sums in another order (measured: ≤ 1e-7 relative).
    assert [loss for _, loss in multi] == pytest.approx([loss for _, loss in single], rel=1e-5)
    # Held-out evaluation gathers every process's rows (process_allgather): the same report as one process.
    held = [[r for r in read_jsonl(w / "metrics.jsonl") if r["split"] == "heldout"] for w in (workdir, baseline)]
    assert [r["step"] for r in held[0]] == [r["step"] for r in held[1]] == [4, 8]
    for got, want in zip(*held, strict=True):
        assert got.keys() == want.keys() and got["split"] == want["split"]
        numbers = [k for k in want if k != "split"]
        assert {k: got[k] for k in numbers} == pytest.approx({k: want[k] for k in numbers}, rel=1e-5)
    data = workdir / "checkpoints" / str(STEPS) / "data"
    assert sorted(p.name for p in data.glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
