"""Experts: at the same compute per token, do more experts (4, 8, 16) lower the loss?

Every token still goes to its top 2 experts of the same width (`model.expert_mlp`), so the active
parameters and FLOPs per token stay the same while the expert parameters grow 2× and 4×. On an
expert-parallel mesh the count must be a multiple of the `expert` axis (2 on cpu-8 and tpu-v5e-16,
4 on tpu-v5p-128: all three counts are); the sweep checks every run against the mesh before it starts.
"""

from __future__ import annotations

PRESET = "tiny"
BASE = {"train.steps": 300}

N_EXPERTS = (4, 8, 16)


def runs():
    for n in N_EXPERTS:
        yield {"model.n_experts": n}
