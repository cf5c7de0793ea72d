"""Shared test helpers: every variant of an op runs the same checks (the op's tests parametrize over them).

A new variant is tested by adding its implementation name to the op's `VARIANTS` in its test module;
the numerics and invariance checks below come with it.
"""

from __future__ import annotations

import numpy as np

# What each op's tests run on CPU: the spec and every Pallas variant through the interpreter.
CPU_IMPLEMENTATIONS = ("reference", "interpret_gpu", "interpret_tpu")
# The same tests, compiled, under the `gpu` / `tpu` markers.
DEVICE_IMPLEMENTATIONS = {"gpu": ("pallas_gpu",), "tpu": ("pallas_tpu",)}
PALLAS_CPU = ("interpret_gpu", "interpret_tpu")


def device_params() -> list:
    """The compiled implementations as pytest params carrying their `gpu` / `tpu` marker."""
    import pytest

    return [
        pytest.param(n, marks=getattr(pytest.mark, kind))
        for kind, names in DEVICE_IMPLEMENTATIONS.items()
        for n in names
    ]


def random_cache(rng: np.random.Generator, b: int, s: int, hkv: int, d: int, lengths, *, poison: bool = True):
    """k, v float32 [B, S, Hkv, D] with slots past each row's length set to NaN (unwritten memory)."""
    k = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    if poison:
        for row, n in enumerate(lengths):
            k[row, n:] = np.nan
            v[row, n:] = np.nan
    return k, v


def assert_bitwise(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    assert same.all(), f"{what}: {int((~same).sum())} of {a.size} values differ (max |Δ| {np.nanmax(np.abs(a - b))})"
