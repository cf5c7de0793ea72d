"""The inverse of `stream.patchify`: 40×40 patches back to whole frames (for viewing and round-trip tests)."""

from __future__ import annotations

import numpy as np

from interaction_jax.config import PATCH_SIZE


def _check_frame_side(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    if value % PATCH_SIZE:
        raise ValueError(f"{name} = {value} is not a multiple of the {PATCH_SIZE}-pixel patch")
    return int(value)


def unpatchify(patches, height: int, width: int):
    """[..., rows*cols, 40, 40, 3] row-major patches → [..., height, width, 3] frames.

    Works on numpy and JAX arrays alike (only `reshape`/`swapaxes` methods are used, so the array
    keeps its kind); `unpatchify(patchify(f), H, W)` equals `f`.
    """
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    if not hasattr(patches, "reshape"):
        patches = np.asarray(patches)
    rows, cols = height // PATCH_SIZE, width // PATCH_SIZE
    expected_tail = (rows * cols, PATCH_SIZE, PATCH_SIZE, 3)
    if patches.ndim < 4 or tuple(patches.shape[-4:]) != expected_tail:
        raise ValueError(
            f"unpatchify expects patches shaped [..., {rows * cols}, {PATCH_SIZE}, {PATCH_SIZE}, 3] "
            f"for a {height}×{width} frame, got {tuple(patches.shape)}"
        )
    lead = tuple(patches.shape[:-4])
    x = patches.reshape(*lead, rows, cols, PATCH_SIZE, PATCH_SIZE, 3)
    x = x.swapaxes(-4, -3)  # [..., rows, 40, cols, 40, 3]: pixel rows of one patch row are now adjacent
    return x.reshape(*lead, height, width, 3)
