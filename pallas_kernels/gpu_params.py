"""The compiler parameters every GPU `pallas_call` passes.

Since JAX 0.10 a GPU `pallas_call` without Triton compiler parameters is lowered by Mosaic GPU,
which copies whole blocks into shared memory (the split-KV cache blocks, the MoE expert weights)
and refuses them; the kernels here are written for Triton, where a block is only a pointer and a
program loads the tiles it names. `interpret=True` ignores them.
"""

from __future__ import annotations

from jax.experimental.pallas import triton as pltriton


def triton(num_warps: int = 4, num_stages: int = 2) -> pltriton.CompilerParams:
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
