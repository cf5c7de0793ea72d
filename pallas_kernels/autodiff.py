"""Kernels that differentiate: the forward pass is the kernel, the backward pass an XLA function's VJP.

A `pallas_call` has no transpose rule, so a model that trains through the kernels (bitwise training:
the trainer runs the sampler's kernels) needs a VJP. The backward pass here is that of a plain XLA
function computing the same value (to float tolerance): the gradients are the fast path's, the
forward stays the kernel's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax


def with_vjp_of(forward: Callable, backward_of: Callable) -> Callable:
    """`forward(*arrays)`, differentiated as `backward_of(*arrays)` would be (same arguments; integer
    arguments get float0 cotangents, as `jax.vjp` gives them)."""

    @jax.custom_vjp
    def fn(*args):
        return forward(*args)

    def fwd(*args):
        return forward(*args), args

    def bwd(args, cotangent):
        return jax.vjp(backward_of, *args)[1](cotangent)

    fn.defvjp(fwd, bwd)
    return fn
