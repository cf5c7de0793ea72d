"""Training windows hold whole episodes, the context a served session has (docs/data.md, Windows)."""

from interaction_jax import config as config_lib
from interaction_jax import demo
from interaction_jax.data import render
from interaction_jax.train import loop


def test_the_demo_trains_on_whole_episodes():
    cfg = demo.demo_config()
    assert cfg.train.window_chunks == cfg.data.episode_chunks
    assert render.num_windows(cfg.data.episode_chunks, cfg.train.window_chunks) == 1
    assert loop.short_window_warning(cfg) is None


def test_windows_shorter_than_an_episode_are_warned_about():
    cfg = config_lib.override(config_lib.preset("tiny"), ["train.window_chunks=25", "data.episode_chunks=50"])
    warning = loop.short_window_warning(cfg)
    assert warning is not None
    assert "train.window_chunks=25" in warning and "data.episode_chunks=50" in warning
    # the control: a window as long as the episode, or longer, is not
    for window in (50, 60):
        longer = config_lib.override(cfg, [f"train.window_chunks={window}"])
        assert loop.short_window_warning(longer) is None
