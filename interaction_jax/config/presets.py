"""The presets: named starting points (`--preset`), each a whole `Config`."""

from __future__ import annotations

from interaction_jax.config.tree import (
    Config,
    ConfigError,
    MeshConfig,
    ModelConfig,
    ServeConfig,
    StreamConfig,
    TrainConfig,
)


def _preset_tiny() -> Config:
    return Config()


def _preset_small() -> Config:  # one GPU, ~1B parameters in total
    return Config(
        model=ModelConfig(
            d_model=1024,
            n_layers=16,
            n_heads=16,
            n_kv_heads=4,
            head_dim=64,
            n_experts=16,
            top_k=2,
            expert_mlp=1024,
            shared_expert_mlp=1024,
            flow_hidden=1024,
            flow_blocks=3,
            dtype="bfloat16",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=160, frame_width=160),
        mesh=MeshConfig(name="gpu-1", device_kind="gpu"),
        train=TrainConfig(batch_size=16, window_chunks=50, learning_rate=6e-4),
        serve=ServeConfig(max_sessions=32, max_len=16384),
    )


def _preset_base() -> Config:  # 8 GPUs or a small TPU slice
    return Config(
        model=ModelConfig(
            d_model=2048,
            n_layers=24,
            n_heads=32,
            n_kv_heads=8,
            head_dim=64,
            n_experts=32,
            top_k=4,
            expert_mlp=1408,
            shared_expert_mlp=2816,
            flow_hidden=2048,
            flow_blocks=4,
            dtype="bfloat16",
            remat="block",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=240, frame_width=320),
        mesh=MeshConfig(name="gpu-8", device_kind="gpu"),
        train=TrainConfig(batch_size=64, window_chunks=50, learning_rate=3e-4),  # whole episodes
        serve=ServeConfig(max_sessions=64, max_len=32768),
    )


def _preset_tml_small_shape() -> Config:  # 276B total / ~12B active: for planning, not training
    return Config(
        model=ModelConfig(
            d_model=5120,
            n_layers=48,
            n_heads=40,
            n_kv_heads=8,
            head_dim=128,
            n_experts=256,
            top_k=8,
            expert_mlp=1440,
            shared_expert_mlp=0,
            flow_hidden=4096,
            flow_blocks=4,
            dtype="bfloat16",
            remat="block",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=360, frame_width=640),
        mesh=MeshConfig(name="tpu-v5p-128", device_kind="tpu"),
        # whole-episode windows (data.episode_chunks 50): a longer window would be padding past the episode
        train=TrainConfig(batch_size=256, window_chunks=50, learning_rate=1.5e-4),
        serve=ServeConfig(max_sessions=128, max_len=65536),
    )


PRESETS = {
    "tiny": _preset_tiny,
    "small": _preset_small,
    "base": _preset_base,
    "tml-small-shape": _preset_tml_small_shape,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}", f"use one of {sorted(PRESETS)}")
    return PRESETS[name]()
