"""The precision of the kernels' dots.

A float32 dot at default precision is TF32 on a GPU's tensor cores and a single bf16 pass on a TPU's
MXU: about 3 significant digits, far from the float32 results the kernels promise (and the
tolerances their tests hold). float32 operands are multiplied at HIGHEST; bf16 ones are exact in
float32 products either way, so they keep the default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def for_operands(dtype) -> jax.lax.Precision | None:
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
