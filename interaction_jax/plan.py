"""Memory and parameter planning from shapes alone (`interaction-jax plan`).

Everything here runs on `jax.eval_shape`, so it plans a 276B-parameter model on a laptop: total and
active parameters, and per-device bytes of parameters, optimizer state and KV cache under a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import flax.linen as nn
import jax

from interaction_jax import config as config_lib
from interaction_jax.config import Config
from interaction_jax.model import cache as kv_cache
from interaction_jax.model import step as step_lib

ADAM_STATES = 2  # AdamW keeps two float32 moments per parameter


def state_copies(cfg: Config) -> int:
    """Parameter-sized float32 arrays the train state holds beside the parameters: AdamW's two moments,
    and the parameters' moving average when `train.ema_decay` keeps one."""
    return ADAM_STATES + (cfg.train.ema_decay > 0)


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh_name: str
    num_devices: int
    axis_sizes: dict[str, int]
    total_params: int
    active_params: int
    expert_params: int
    param_bytes_per_device: float
    optimizer_bytes_per_device: float  # AdamW's moments, and the parameters' moving average if one is kept
    cache_bytes_per_device: float
    cache_sessions: int
    cache_len: int

    def table(self) -> str:
        gib = 1024**3
        rows = [
            (
                "mesh",
                f"{self.mesh_name} ({self.num_devices} device{'s' if self.num_devices > 1 else ''}"
                + "".join(
                    f"{', ' if i == 0 else ' × '}{a} {n}"
                    for i, (a, n) in enumerate((a, n) for a, n in self.axis_sizes.items() if n > 1)
                )
                + ")",
            ),
            ("total parameters", f"{self.total_params / 1e9:,.3f} B"),
            ("active parameters / token", f"{self.active_params / 1e9:,.3f} B"),
            ("expert parameters", f"{self.expert_params / 1e9:,.3f} B"),
            ("params / device (f32)", f"{self.param_bytes_per_device / gib:,.2f} GiB"),
            (
                "optimizer / device (AdamW f32)"
                if self.optimizer_bytes_per_device <= ADAM_STATES * self.param_bytes_per_device
                else "optimizer / device (AdamW f32 + params' average)",
                f"{self.optimizer_bytes_per_device / gib:,.2f} GiB",
            ),
            (
                f"KV cache / device ({self.cache_sessions} × {self.cache_len} tokens)",
                f"{self.cache_bytes_per_device / gib:,.2f} GiB",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _leaf_shard_factor(names: tuple, cfg: Config, sizes: dict[str, int], shape: tuple[int, ...]) -> int:
    """How many ways a leaf is split: the product over its dims of the mesh axes its name maps to,
    counting each mesh axis once (as the partitioner does)."""
    used: set[str] = set()
    factor = 1
    for name, dim in zip(names, shape, strict=True):
        if name is None:
            continue
        axes = [a for a in cfg.mesh.rule(name) if a not in used]
        n = config_lib.axes_size(sizes, axes)
        if n > 1 and dim % n == 0:
            factor *= n
            used.update(axes)
    return factor


def make_plan(cfg: Config, num_devices: int, purpose: Literal["all", "train", "serve"] = "all") -> Plan:
    """The plan of `cfg` on `num_devices`, after validating it for `purpose` (`config.validate`)."""
    config_lib.validate(cfg, num_devices, purpose=purpose)
    sizes = config_lib.resolve_axis_sizes(cfg.mesh, num_devices)
    boxed = jax.eval_shape(functools.partial(step_lib.init_variables, cfg), jax.random.key(0))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(
            boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
        )[0]
    ]
    total = expert = 0
    per_device = 0.0
    for path, leaf in zip(paths, leaves, strict=True):
        value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else (None,) * len(value.shape)
        count = math.prod(value.shape)
        total += count
        if "'moe'" in path and "'shared'" not in path and "router" not in path:
            expert += count
        per_device += count * 4 / _leaf_shard_factor(names, cfg, sizes, value.shape)
    m = cfg.model
    active = total - expert + expert * m.top_k // m.n_experts
    cache_batch = config_lib.axes_size(sizes, cfg.mesh.rule("cache_batch"))
    sessions = cfg.serve.max_sessions
    cache_shards = cache_batch if sessions % cache_batch == 0 else 1
    kv_sharding = config_lib.axes_size(sizes, cfg.mesh.rule("act_kv_heads"))
    kv_shards = kv_sharding if m.n_kv_heads % kv_sharding == 0 else 1
    cache_bytes = kv_cache.cache_bytes(m, sessions, cfg.serve.max_len) / (cache_shards * kv_shards)
    return Plan(
        cfg.mesh.name,
        num_devices,
        sizes,
        total,
        active,
        expert,
        per_device,
        per_device * state_copies(cfg),
        cache_bytes,
        sessions,
        cfg.serve.max_len,
    )
