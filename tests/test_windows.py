"""Training windows hold whole episodes, the context a served session has (docs/data.md, Windows)."""

from interaction_jax import config as config_lib
from interaction_jax import demo
from interaction_jax.data import render
from interaction_jax.train import loop


def test_the_demo_trains_on_whole_episodes():
    cfg = demo.demo_config()
    assert cfg.train.window_chunks == cfg.data.episode_chunks
    assert render.num_windows(cfg.data.episode_chunks, cfg.train.window_chunks) == 1
    assert loop.window_warning(cfg) is None


def test_windows_shorter_than_an_episode_are_warned_about():
    cfg = config_lib.override(config_lib.preset("tiny"), ["train.window_chunks=25", "data.episode_chunks=50"])
    warning = loop.window_warning(cfg)
    assert warning is not None
    assert "train.window_chunks=25" in warning and "data.episode_chunks=50" in warning
    # the control: a window as long as the episode is not
    assert loop.window_warning(config_lib.override(cfg, ["train.window_chunks=50"])) is None


def test_windows_longer_than_an_episode_are_warned_about_as_padding():
    cfg = config_lib.override(config_lib.preset("tiny"), ["train.window_chunks=150", "data.episode_chunks=50"])
    warning = loop.window_warning(cfg)
    assert "is longer than an episode" in warning and "100 chunks of every window are padding" in warning
    assert "(67% of each step's tokens)" in warning


def test_no_preset_trains_on_windows_longer_than_its_episodes():
    """(tml-small-shape once had 150-chunk windows of 50-chunk episodes: two thirds of every step padding.)"""
    for name in config_lib.PRESETS:
        cfg = config_lib.preset(name)
        assert cfg.train.window_chunks <= cfg.data.episode_chunks, name
