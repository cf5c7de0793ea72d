"""The grain pipeline: (scenario mixture, seed, index) → episode → windows of N chunks → batches.

Every element is a pure function of its index, so the data order is a function of the step: a run
restarted from a checkpointed iterator state sees exactly the batches it would have seen. Indices are
sliced per process before anything is computed (process p of P takes indices p, p+P, …), and the
held-out split draws from disjoint seeds (odd vs even), sentences and voices (`data/corpus.py`).

    ds = pipeline.batches(cfg, "train", clips=pipeline.clip_source(cfg))
    it = iter(ds)
    batch = next(it)            # dict of numpy arrays [B, …], the keys of stream.assemble_window + loss_mask
    state = it.get_state()      # JSON-able; it.set_state(state) resumes from here
"""

from __future__ import annotations

import json
import os

import grain
import numpy as np
from absl import flags

from interaction_jax.config import Config, DataConfig
from interaction_jax.data import corpus, render, scenarios
from interaction_jax.data.bank import ClipBank, LiveClips
from interaction_jax.data.episode import SPLITS, ClipSource, Episode, ScenarioContext, Split

_SPLIT_BIT = {"train": 0, "heldout": 1}
TRAIN_EPISODES = 1 << 40  # "infinite": every index is a fresh episode, and a run never wraps around


def _check_split(split: str) -> None:
    if split not in _SPLIT_BIT:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")


def episode_seed(data: DataConfig, split: Split, index: int) -> int:
    """The seed of episode `index` of `split`: even for train, odd for held-out, so the splits never share one."""
    _check_split(split)
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    return 2 * (data.seed * TRAIN_EPISODES + index) + _SPLIT_BIT[split]


def scenario_for(data: DataConfig, seed: int) -> str:
    """The scenario an episode seed draws from the mixture `data.scenarios` / `data.weights`."""
    weights = np.asarray(data.weights, np.float64)
    rng = np.random.default_rng([seed, 0x5CE7])
    return data.scenarios[int(rng.choice(len(weights), p=weights / weights.sum()))]


def camera_off(data: DataConfig, seed: int) -> bool:
    """Whether the training episode of `seed` has the user's camera off (a `data.camera_off` share of them)."""
    return bool(np.random.default_rng([seed, 0xCA3]).random() < data.camera_off)


def heldout_scenario(data: DataConfig, index: int) -> str:
    """Held-out episodes cycle through the scenarios in the mix (weight > 0), so any 7·n of them are balanced."""
    active = [name for name, w in zip(data.scenarios, data.weights, strict=True) if w > 0]
    return active[index % len(active)]


def make_episode(cfg: Config, split: Split, index: int, clips: ClipSource) -> Episode:
    """Episode `index` of `split`: a pure function of (config, split, index).

    Training draws each episode's scenario from the `data.weights` mixture; the held-out split cycles
    through them in order (`heldout_scenario`), so a small evaluation set covers every task equally.
    A `data.camera_off` share of training episodes has the camera off (`camera_off`); held-out ones never.
    """
    seed = episode_seed(cfg.data, split, index)
    name = heldout_scenario(cfg.data, index) if split == "heldout" else scenario_for(cfg.data, seed)
    camera = split == "heldout" or scenarios.get(name).needs_video or not camera_off(cfg.data, seed)
    ctx = ScenarioContext(
        stream=cfg.stream, clips=clips, split=split, num_chunks=cfg.data.episode_chunks, camera=camera
    )
    return scenarios.make_episode(name, seed, ctx)


def bank_entries() -> tuple:
    """Every (text, voice) any split's scenarios may ask for, once (the model's lines serve both splits)."""
    return tuple(dict.fromkeys(e for split in SPLITS for e in corpus.bank_entries(split)))


def clip_source(cfg: Config, progress: bool = True) -> ClipBank:
    """The clip bank for `cfg` (built on first use under `data.clip_cache`, then reused)."""
    return ClipBank.open(bank_entries(), cfg.data.clip_cache or None, cfg.stream.sample_rate, progress)


class _EpisodeWindows(grain.transforms.Map):
    """index → the episode's training windows (a list); runs inside grain workers, so it must pickle."""

    def __init__(self, cfg: Config, split: Split, clips: ClipSource):
        self.cfg, self.split, self.clips = cfg, split, clips

    def map(self, index):
        ep = make_episode(self.cfg, self.split, int(index), self.clips)
        task = np.int32(scenarios.get(ep.scenario).number)  # `scenarios.names()[task]` is its name
        return [w | {"task": task} for w in render.episode_windows(ep, self.cfg.stream, self.cfg.train.window_chunks)]


class _Flatten(grain.experimental.FlatMapTransform):
    def __init__(self, max_fan_out: int):
        self.max_fan_out = max_fan_out

    def flat_map(self, element):
        return element


def read_options(read_ahead: int) -> grain.ReadOptions:
    """grain's threads for making episodes: `read_ahead` episodes made ahead of the reader, by at most one
    thread per CPU core. (grain's default, 16 threads making up to 500 episodes ahead, kept a 2-core
    machine busy with episodes an 8-step run never reached: the run took 23 s, 8 s with 2 ahead.)"""
    return grain.ReadOptions(num_threads=max(1, min(read_ahead, os.cpu_count() or 1)), prefetch_buffer_size=read_ahead)


def windows(
    cfg: Config,
    split: Split = "train",
    *,
    clips: ClipSource | None = None,
    num_episodes: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    read_ahead: int = 1,
) -> grain.IterDataset:
    """Training windows of `split`, episode after episode, for process `process_index` of `process_count`.

    `num_episodes` bounds the episodes (the whole split before slicing); None means endless for train.
    Held-out needs a bound: it is a fixed evaluation set. `read_ahead`: episodes made ahead of the reader
    (`read_options`); it changes no element, only how soon each is made.
    """
    _check_split(split)
    scenarios.check_mix(cfg)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if num_episodes is None:
        if split == "heldout":
            raise ValueError("the held-out split needs num_episodes (it is a fixed evaluation set)")
        num_episodes = TRAIN_EPISODES
    clips = clips if clips is not None else LiveClips(cfg.stream.sample_rate)
    ds = grain.MapDataset.range(num_episodes)[process_index::process_count]
    ds = ds.map(_EpisodeWindows(cfg, split, clips)).to_iter_dataset(read_options(read_ahead))
    fan_out = render.num_windows(cfg.data.episode_chunks, cfg.train.window_chunks)
    return grain.experimental.FlatMapIterDataset(ds, _Flatten(fan_out))


def batches(
    cfg: Config,
    split: Split = "train",
    *,
    batch_size: int | None = None,
    clips: ClipSource | None = None,
    num_episodes: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int | None = None,
) -> grain.IterDataset:
    """Batches of `batch_size` windows (default: train.batch_size / process_count, this process's share).

    With `num_workers` > 0 (default `data.num_workers`) episodes are made in that many worker processes,
    each taking every num_workers-th episode and batching its own windows: batches are deterministic for
    a given worker count (and a saved iterator state resumes exactly), but differ between worker counts.
    """
    if batch_size is None:
        if cfg.train.batch_size % process_count:
            raise ValueError(f"train.batch_size {cfg.train.batch_size} does not split over {process_count} processes")
        batch_size = cfg.train.batch_size // process_count
    # `data.read_ahead` batches' worth of episodes made ahead
    fan_out = render.num_windows(cfg.data.episode_chunks, cfg.train.window_chunks)
    read_ahead = cfg.data.read_ahead * -(-batch_size // fan_out)
    ds = windows(
        cfg,
        split,
        clips=clips,
        num_episodes=num_episodes,
        process_index=process_index,
        process_count=process_count,
        read_ahead=read_ahead,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags when workers start; notebooks never parse any
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


def num_shards(cfg: Config, process_count: int) -> int:
    """The data shards the global batch is cut from: `data.shards`, or one per process when it is 0."""
    shards = cfg.data.shards or process_count
    if shards % process_count or cfg.train.batch_size % shards:
        raise ValueError(
            f"data.shards={shards} must be a multiple of the {process_count} processes and divide "
            f"train.batch_size={cfg.train.batch_size}"
        )
    return shards


class ShardedBatches:
    """This process's rows of every global batch: its data shards' batches, concatenated in shard order.

    Shard s of S is `batches(cfg, split, batch_size=B/S, process_index=s, process_count=S)`, so the global
    batch of a step depends on (config, step) only — not on how many processes read it, as long as
    `data.shards` is fixed. `get_state`/`set_state` carry every shard's grain state (as JSON bytes, the form
    grain's orbax `CheckpointHandler` stores for a non-grain iterator).
    """

    def __init__(
        self,
        cfg: Config,
        split: Split = "train",
        *,
        clips: ClipSource | None = None,
        num_episodes: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        shards = num_shards(cfg, process_count)
        per_process = shards // process_count
        self._iterators = [
            iter(
                batches(
                    cfg,
                    split,
                    batch_size=cfg.train.batch_size // shards,
                    clips=clips,
                    num_episodes=num_episodes,
                    process_index=shard,
                    process_count=shards,
                )
            )
            for shard in range(process_index * per_process, (process_index + 1) * per_process)
        ]

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
        return json.dumps([it.get_state() for it in self._iterators]).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state)
        if len(states) != len(self._iterators):
            raise ValueError(
                f"the saved data state has {len(states)} shard(s) for this process but it reads "
                f"{len(self._iterators)}; set data.shards to the value of the run that saved it"
            )
        for it, s in zip(self._iterators, states, strict=True):
            it.set_state(s)

    def start_prefetch(self) -> None:
        """Part of the iterator protocol grain's checkpoint handler calls after a restore; nothing to do."""
