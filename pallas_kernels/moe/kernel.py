"""What the GPU and TPU variants share: the matmul epilogue and the slot combine.

`moe_gemv` and `moe_gmm` run the same `expert_matmul` on tiles of exactly `block_rows` rows: gemv
puts one token in a tile (every row the same token), gmm fills tiles with the tokens of one expert.
A row's result therefore comes from the same operations on the same shapes in both, whichever rows
share its tile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def epilogue(accs: tuple[jax.Array, ...], silu: bool) -> jax.Array:
    """The gate and up products → the SwiGLU hidden silu(g) · u (`silu`); else the one product."""
    return jax.nn.silu(accs[0]) * accs[1] if silu else accs[0]


def combine_kernel(y_ref, w_ref, o_ref, *, chunk: int | None = None) -> None:
    """Tokens' k slot outputs y [R, k·D] weighted by w [k, R, 1] and summed in slot order → o [R, D].

    The slots are lane-aligned column blocks of y read through the ref (Triton cannot slice a loaded
    value), `chunk` columns at a time (Triton's tensors have power-of-two sizes: D = 5120 goes in
    chunks of 1024; None: all of D); the arithmetic is `reference.combine`'s, element for element."""
    d = o_ref.shape[1]
    chunk = chunk or d
    for c in range(0, d, chunk):
        out = w_ref[0] * y_ref[:, pl.ds(c, chunk)]
        for j in range(1, w_ref.shape[0]):
            out = out + w_ref[j] * y_ref[:, pl.ds(j * d + c, chunk)]
        o_ref[:, pl.ds(c, chunk)] = out


def combine_call(y, weights, *, block_tokens: int, chunk: int | None = None, **pallas_options):
    """The slot combine, `block_tokens` tokens per program: y [T, k, D], weights [T, k] → float32 [T, D].

    y is read as [T, k·D] (a free reshape) and the weights as [k, T, 1], so every block keeps its last
    two dimensions whole or tiled: the TPU takes 8 tokens a block (its (8, 128) rule; fewer tokens
    are one whole block), the GPU one, in power-of-two `chunk`s of D. `pallas_options` carries the
    backend's compiler parameters and `interpret` setting.
    """
    t, k, d = y.shape
    rows = t if t < block_tokens else block_tokens
    return pl.pallas_call(
        functools.partial(combine_kernel, chunk=chunk),
        grid=(pl.cdiv(t, rows),),
        in_specs=[pl.BlockSpec((rows, k * d), lambda i: (i, 0)), pl.BlockSpec((k, rows, 1), lambda i: (0, i, 0))],
        out_specs=pl.BlockSpec((rows, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((t, d), jnp.float32),
        name="moe_combine",
        **pallas_options,
    )(y.reshape(t, k * d), weights.astype(jnp.float32).T[..., None])
