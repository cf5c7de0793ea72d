"""`validate`: every section's own checks, then the few that need two sections, then the mesh's devices.

A section's checks stand with its fields (`tree.py`: the numeric bounds in the field declarations, the
rest in the section's `check`). What is here is only what one section cannot see alone.
"""

from __future__ import annotations

from typing import Literal

from interaction_jax.config.mesh import axes_size, resolve_axis_sizes
from interaction_jax.config.tree import Config, ConfigError

Purpose = Literal["all", "train", "serve"]


def validate(cfg: Config, num_devices: int | None = None, purpose: Purpose = "all") -> Config:
    """Raise ConfigError for the first problem found; return cfg unchanged when it is sound.

    With `num_devices`, mesh-dependent checks run too (divisibility of heads, experts, vocab, batch).
    `purpose` checks only what that job reads: "train" leaves out the serve.* keys other than the
    sampling ones (`TRAINING_SERVE_KEYS`: the server's address, limits, sessions, cache and agent are
    never read by training), "serve" the training batch's divisibility; "all" checks everything.
    What the scenarios in `data.scenarios` need (known names, episode length, video) is checked by
    `data.scenarios.check_mix`, which knows them.
    """
    cfg.model.check()
    cfg.stream.check()
    cfg.train.check()
    cfg.serve.check(server=purpose != "train")
    cfg.data.check()
    cfg.kernels.check()
    cfg.mesh.check()
    check_across_sections(cfg)
    if num_devices is not None:
        check_on_devices(cfg, num_devices, purpose)
    return cfg


def check_across_sections(cfg: Config) -> None:
    """The checks of one section's key against another section's."""
    m, s, t, d, kc = cfg.model, cfg.stream, cfg.train, cfg.data, cfg.kernels
    if s.video and t.window_chunks % s.video_every:
        raise ConfigError(
            "train.window_chunks",
            f"{t.window_chunks} chunks is not a multiple of "
            f"stream.video_every={s.video_every}, so windows would differ in length",
            "use a multiple of video_every",
        )
    if d.shards and t.batch_size % d.shards:
        raise ConfigError(
            "data.shards", f"batch_size {t.batch_size} does not split over {d.shards} data shards", "use a divisor"
        )
    # The MoE kernels run past an expert width that is not a multiple of the tile and mask what they read
    # there (tml-small-shape's 1440); the model width they do not pad.
    if m.moe_dispatch in ("gemv", "gmm", "auto") and m.d_model % kc.moe_block_k:
        raise ConfigError(
            "kernels.moe_block_k",
            f"{kc.moe_block_k} does not divide model.d_model ({m.d_model})",
            "use a divisor of model.d_model",
        )
    if t.vap_weight and not m.vap_horizon:
        raise ConfigError(
            "train.vap_weight",
            f"{t.vap_weight} weighs a voice-activity projection loss, but the model has no head for it",
            "set model.vap_horizon to the chunks ahead it should predict (e.g. 10), or train.vap_weight=0",
        )
    if cfg.serve.calibrate_pad and t.pad_weight == 0:
        raise ConfigError(
            "serve.calibrate_pad",
            "the PAD logit cannot be calibrated for train.pad_weight 0 (the model never learned when to be silent)",
            "give train.pad_weight a value > 0, or set serve.calibrate_pad=false",
        )


def check_on_devices(cfg: Config, num_devices: int, purpose: Purpose = "all") -> None:
    """The mesh fits `num_devices`, and every sharded size divides over the devices its logical axis spans."""
    m = cfg.model
    sizes = resolve_axis_sizes(cfg.mesh, num_devices)
    checks = [
        ("heads", m.n_heads, "model.n_heads"),
        ("kv_heads", m.n_kv_heads, "model.n_kv_heads"),
        ("exp", m.n_experts, "model.n_experts"),
        ("vocab", m.vocab_size, "model.vocab_size"),
        ("embed", m.d_model, "model.d_model"),
        ("mlp", m.dense_mlp, "model.dense_mlp"),
        ("exp_mlp", m.expert_mlp, "model.expert_mlp"),
    ]
    if purpose != "serve":
        checks.append(("act_batch", cfg.train.batch_size, "train.batch_size"))
    if purpose != "train":
        checks.append(("cache_batch", cfg.serve.max_sessions, "serve.max_sessions"))
    for logical, value, key in checks:
        axes = cfg.mesh.rule(logical)
        n = axes_size(sizes, axes)
        if value % n:
            raise ConfigError(
                key,
                f"{value} is not divisible by the {n} devices of mesh axes {list(axes)} "
                f"that logical axis '{logical}' is sharded over (mesh {cfg.mesh.name})",
                f"make {key} a multiple of {n}, or change the mesh",
            )
