"""Synthetic video: numpy-rendered scenes (moving distractors, colour changes, cues, repetitions) and patches.

`patchify` (frames → 40×40 patches, the model's view) lives with the stream layout and is re-exported
here; `unpatchify` is its inverse.
"""

from interaction_jax.stream import patchify
from interaction_jax.video.patches import unpatchify
from interaction_jax.video.scene import (
    CUE_RED,
    KINDS,
    Appear,
    ColorChange,
    Repetition,
    Scene,
    Shape,
    is_reddish,
    random_scene,
    render,
    repetition_displacement,
    repetition_phase,
    repetition_position,
    shape_position,
    with_cue,
    with_repetition,
)

__all__ = [
    "CUE_RED",
    "KINDS",
    "Appear",
    "ColorChange",
    "Repetition",
    "Scene",
    "Shape",
    "is_reddish",
    "patchify",
    "random_scene",
    "render",
    "repetition_displacement",
    "repetition_phase",
    "repetition_position",
    "shape_position",
    "unpatchify",
    "with_cue",
    "with_repetition",
]
