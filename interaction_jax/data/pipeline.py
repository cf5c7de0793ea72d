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


def make_episode(cfg: Config, split: Split, index: int, clips: ClipSource) -> Episode:
    """Episode `index` of `split`: a pure function of (config, split, index)."""
    seed = episode_seed(cfg.data, split, index)
    ctx = ScenarioContext(stream=cfg.stream, clips=clips, split=split, num_chunks=cfg.data.episode_chunks)
    return scenarios.make_episode(scenario_for(cfg.data, seed), seed, ctx)


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
        return render.episode_windows(ep, self.cfg.stream, self.cfg.train.window_chunks)


class _Flatten(grain.experimental.FlatMapTransform):
    def __init__(self, max_fan_out: int):
        self.max_fan_out = max_fan_out

    def flat_map(self, element):
        return element


def windows(
    cfg: Config,
    split: Split = "train",
    *,
    clips: ClipSource | None = None,
    num_episodes: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Training windows of `split`, episode after episode, for process `process_index` of `process_count`.

    `num_episodes` bounds the episodes (the whole split before slicing); None means endless for train.
    Held-out needs a bound: it is a fixed evaluation set.
    """
    _check_split(split)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if num_episodes is None:
        if split == "heldout":
            raise ValueError("the held-out split needs num_episodes (it is a fixed evaluation set)")
        num_episodes = TRAIN_EPISODES
    clips = clips if clips is not None else LiveClips(cfg.stream.sample_rate)
    ds = grain.MapDataset.range(num_episodes)[process_index::process_count]
    ds = ds.map(_EpisodeWindows(cfg, split, clips)).to_iter_dataset()
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
    ds = windows(
        cfg, split, clips=clips, num_episodes=num_episodes, process_index=process_index, process_count=process_count
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags when workers start; notebooks never parse any
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds
