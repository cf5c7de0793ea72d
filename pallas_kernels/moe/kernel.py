"""What the GPU and TPU variants share: the matmul epilogue and the slot combine.

`moe_gemv` and `moe_gmm` run the same `expert_matmul` on tiles of exactly `block_rows` rows: gemv
puts one token in a tile (every row the same token), gmm fills tiles with the tokens of one expert.
A row's result therefore comes from the same operations on the same shapes in both, whichever rows
share its tile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.moe.reference import combine


def epilogue(accs: tuple[jax.Array, ...], silu: bool) -> jax.Array:
    """The gate and up products → the SwiGLU hidden silu(g) · u (`silu`); else the one product."""
    return jax.nn.silu(accs[0]) * accs[1] if silu else accs[0]


def combine_kernel(y_ref, w_ref, o_ref) -> None:
    """One token's k slot outputs y [k, D] weighted by w [k] (as [k, 1]) and summed in slot order."""
    o_ref[...] = combine(y_ref[...][None], w_ref[...][None, :, 0])[0]


def combine_call(y, weights, **pallas_options):
    """The slot combine as one program per token: y [T, k, D], weights [T, k] → float32 [T, D].

    The same call on both backends (its blocks keep whole last dimensions); `pallas_options` carries
    the backend's `interpret` setting.
    """
    t, k, d = y.shape
    return pl.pallas_call(
        combine_kernel,
        grid=(t,),
        in_specs=[pl.BlockSpec((None, k, d), lambda i: (i, 0, 0)), pl.BlockSpec((None, k, 1), lambda i: (i, 0, 0))],
        out_specs=pl.BlockSpec((None, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((t, d), jnp.float32),
        name="moe_combine",
        **pallas_options,
    )(y, weights.astype(jnp.float32)[..., None])
