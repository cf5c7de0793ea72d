"""TPU block sizes chosen from an operand's shape, within a VMEM budget.

A Pallas TPU grid step has a fixed cost on top of its DMAs, and a decode matmul cut into 128 × 128
weight tiles takes many of them: 64 × 4096 × 4096 was 32 × 32 = 1,024 steps. The kernels here take
bigger tiles along the weight's dimensions instead — (K, N) of a matmul's [K, N] weight —, never
along the rows (M, the tokens): a row's result must not depend on how many rows there are. Inside a
tile a kernel still runs its config's blocks (`bk` × `bn`, `block_k` × `block_k`), the reduction in
order, so the arithmetic is the one its spec states whatever tile is taken.

The budget: what a kernel's pipeline may hold in VMEM (every input and output block double-buffered,
plus its scratch), `VMEM_BUDGET` = 8 MiB, half of the 16 MiB a Mosaic kernel may take by default on
v5e and v5p (the scoped-VMEM default; a kernel that needs more must raise `vmem_limit_bytes`), so
Mosaic's own internal scratch has room (the deviceless compile enforces that limit: a bigger pipeline
fails with `CompileTimeScopedVmemOom`, "limit 16.00M"). Tiles keep the (8, 128) rule (multiples of
128 lanes) and divide the reduction they cut (or, for a kernel that masks a ragged reduction, its
length rounded up to the tile granule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

SCOPED_VMEM_LIMIT = 16 * 2**20  # v5e and v5p; the deviceless compile states it ("limit 16.00M") when refusing more
VMEM_BUDGET = SCOPED_VMEM_LIMIT // 2
LANES = 128


def vmem_bytes(shape, dtype) -> int:
    """Bytes a VMEM buffer of `shape` takes: its last two dims padded to (8 · packing, 128) tiles (a
    bf16 tile is 16 × 128, an f32 one 8 × 128)."""
    itemsize = jnp.dtype(dtype).itemsize
    dims = (1, 1, *shape)
    lead, rows, lanes = math.prod(dims[:-2]), dims[-2], dims[-1]
    sublanes = 8 * max(1, 4 // itemsize)
    return lead * -(-rows // sublanes) * sublanes * -(-lanes // LANES) * LANES * itemsize


def _candidates(dim: int, unit: int) -> list[int]:
    """The multiples of `unit` that divide `dim`, largest first."""
    return [t for t in range(dim - dim % unit, 0, -unit) if dim % t == 0]


def tiles(
    k: int,
    n: int,
    *,
    k_unit: int,
    n_unit: int,
    vmem: Callable[[int, int], int],
    budget: int = VMEM_BUDGET,
    min_column_steps: int = 1,
    pad_k: bool = False,
) -> tuple[int, int]:
    """(tn, tk): the tiles of a [K, N] weight that take the fewest grid steps (⌈N/tn⌉ · K/tk) with
    `vmem(tn, tk)` within `budget`; among equals, the widest tn (whole rows are contiguous in HBM).

    tk is a multiple of `k_unit` dividing K (if K is not a multiple of k_unit: the whole K, or with
    `pad_k` one dividing K rounded up to k_unit, for a kernel that masks the reduction's ragged end);
    tn a multiple of `n_unit` dividing N rounded up to n_unit (a ragged N has one partial edge block),
    leaving at least `min_column_steps` column blocks where N allows it (on a v5p the two
    TensorCores split the parallel grid axes). If nothing fits, the smallest of them."""
    n_padded = -(-n // n_unit) * n_unit
    column = _candidates(n_padded, n_unit)
    column = [t for t in column if n_padded // t >= min_column_steps] or column[-1:]
    k_padded = -(-k // k_unit) * k_unit if pad_k else k
    reduce = _candidates(k_padded, k_unit) if k_padded % k_unit == 0 else [k]
    steps = lambda tn, tk: -(-n // tn) * -(-k // tk)
    fits = [(steps(tn, tk), -tn, -tk) for tn in column for tk in reduce if vmem(tn, tk) <= budget]
    if not fits:
        return column[-1], reduce[-1]
    _, tn, tk = min(fits)
    return -tn, -tk


def unit(block: int) -> int:
    """A tile's granule: a multiple of the kernel's own block and of the 128 lanes."""
    return math.lcm(block, LANES)
