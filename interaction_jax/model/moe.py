"""The mixture-of-experts feed-forward: a float32 top-k router and dropless SwiGLU experts (DESIGN §5, §7).

The maths lives in small pure functions over flattened tokens `x [N, D]`; `MoE` is a thin Linen module
that owns the parameters and picks a dispatch:

- `experts_dense`: every expert on every token, combined with routing weights that are zero for the
  unselected experts. O(E) compute; the reference the others are tested against.
- `experts_ragged`: sort the (token, slot) assignments by expert (stable), run grouped matmuls with
  `jax.lax.ragged_dot` over the per-expert group sizes, unsort, weight and sum over the k slots.
- `experts_gather`: gather each assignment's expert weights and einsum; cheap only for few tokens
  (decoding), since it materialises `[N, k, D, F]` weights.

All three are dropless: there is no capacity factor, every assignment is computed, including the case
where every token picks the same expert. Expert matmuls run in the dtype of `x`; the k outputs are
weighted and summed in float32 and the result is float32.

The kernel dispatches (`gemv`, `gmm`, `auto`) run `pallas_kernels`' MoE kernels: `auto` takes
`moe_gemv` for few tokens and `moe_gmm` for many, which compute a token bit-identically.

Expert parallelism (`ragged` or a kernel dispatch on a mesh whose 'exp' axes have more than one
device), inside `jax.shard_map`, as `model.expert_parallel` says: `experts_parallel` (all_gather: every
token to every expert shard, outputs reduce-scattered back) or `experts_all_to_all` (all_to_all: each
assignment only to its expert's shard and back, with `jax.lax.ragged_all_to_all`; the bookkeeping is
`model/expert_parallel.py`, which says which moves fewer bytes when).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import KernelsConfig, ModelConfig
from interaction_jax.model import expert_parallel as xp
from interaction_jax.model import kernels as kernels_lib
from interaction_jax.model import layers
from interaction_jax.model.layers import param

# ----------------------------------------------------------------------------------------------
# Router and auxiliary losses


def route(router_logits: jax.Array, top_k: int, normalize: bool) -> tuple[jax.Array, jax.Array]:
    """Top-k softmax routing in float32.

    router_logits [N, E] → (weights [N, k] float32, expert_ids [N, k] int32), best expert first. With
    `normalize` the k weights are renormalised to sum to one; otherwise they are the raw probabilities.
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    weights, expert_ids = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, expert_ids.astype(jnp.int32)


def load_balance_loss(router_probs: jax.Array, expert_ids: jax.Array, token_mask: jax.Array) -> jax.Array:
    """Switch/GShard load balancing: E · Σ_e f_e · P_e over the valid tokens only.

    f_e is the fraction of the valid (token, slot) assignments sent to expert e (so Σ f_e = 1 for any
    k) and P_e the mean router probability of expert e over the valid tokens. Uniform routing gives 1;
    routing everything to one expert gives up to E. Zero when no token is valid.
    """
    n_experts = router_probs.shape[-1]
    mask = token_mask.astype(jnp.float32)
    n_valid = jnp.maximum(jnp.sum(mask), 1.0)
    one_hot = jax.nn.one_hot(expert_ids, n_experts, dtype=jnp.float32)  # [N, k, E]
    counts = jnp.einsum("nke,n->e", one_hot, mask)
    f = counts / (n_valid * expert_ids.shape[-1])
    p = jnp.einsum("ne,n->e", router_probs.astype(jnp.float32), mask) / n_valid
    return n_experts * jnp.sum(f * p)


def router_z_loss(router_logits: jax.Array, token_mask: jax.Array) -> jax.Array:
    """ST-MoE router z-loss: the mean over valid tokens of logsumexp(logits)²."""
    mask = token_mask.astype(jnp.float32)
    z = jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(z * z * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----------------------------------------------------------------------------------------------
# Expert dispatches (x [N, D], weights/expert_ids [N, k], w_gate/w_up [E, D, F], w_down [E, F, D])


def _combine(y: jax.Array, weights: jax.Array) -> jax.Array:
    """Weight the per-slot outputs y [N, k, D] and sum over k, in float32."""
    return jnp.einsum("nkd,nk->nd", y.astype(jnp.float32), weights.astype(jnp.float32))


def experts_dense(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
) -> jax.Array:
    """Every expert on every token, combined with the routing weights (zero where unselected)."""
    n_experts = w_gate.shape[0]
    dt = x.dtype
    combine = jnp.einsum(
        "nke,nk->ne", jax.nn.one_hot(expert_ids, n_experts, dtype=jnp.float32), weights.astype(jnp.float32)
    )
    h = jax.nn.silu(jnp.einsum("nd,edf->enf", x, w_gate.astype(dt))) * jnp.einsum("nd,edf->enf", x, w_up.astype(dt))
    y = jnp.einsum("enf,efd->end", h, w_down.astype(dt))
    return jnp.einsum("end,ne->nd", y.astype(jnp.float32), combine)


def _grouped_swiglu(xs: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, group_sizes) -> jax.Array:
    """SwiGLU of rows xs [R, D] grouped by expert (`group_sizes` [E]: consecutive rows per expert; rows
    past their sum come out zero), in the dtype of xs."""
    dt = xs.dtype
    h = jax.nn.silu(jax.lax.ragged_dot(xs, w_gate.astype(dt), group_sizes)) * jax.lax.ragged_dot(
        xs, w_up.astype(dt), group_sizes
    )
    return jax.lax.ragged_dot(h, w_down.astype(dt), group_sizes)


def _experts_ragged_local(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
    expert_offset: jax.Array | int,
) -> jax.Array:
    """The contributions of experts [offset, offset + E_local) only (E_local = w_gate.shape[0]).

    Assignments are stably sorted by local expert id with every non-local assignment keyed E_local, so
    they come last and fall outside Σ group_sizes; ragged_dot leaves those rows zero, and they are
    masked anyway. Returns float32 [N, D].
    """
    n, k = expert_ids.shape
    n_local = w_gate.shape[0]
    local = expert_ids.reshape(-1) - expert_offset
    is_local = (local >= 0) & (local < n_local)
    key = jnp.where(is_local, local, n_local).astype(jnp.int32)
    # lax.sort, not jnp.argsort: on JAX 0.10.2 jnp.argsort drops the varying-manual-axes type inside
    # shard_map, so the backward pass of `take(x, order)` would psum row cotangents in different orders.
    iota = jnp.arange(key.shape[0], dtype=jnp.int32)
    order = jax.lax.sort((key, iota), num_keys=1, is_stable=True)[1]
    group_sizes = jnp.bincount(key, length=n_local + 1)[:n_local].astype(jnp.int32)
    xs = jnp.take(x, order // k, axis=0)  # [N·k, D], grouped by expert
    ys = _grouped_swiglu(xs, w_gate, w_up, w_down, group_sizes)
    ys = jnp.where(jnp.take(is_local, order)[:, None], ys, jnp.zeros((), ys.dtype))
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    y = jnp.take(ys, inverse, axis=0).reshape(n, k, -1)
    return _combine(y, weights)


def experts_ragged(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
) -> jax.Array:
    """Sort assignments by expert, grouped matmuls with `jax.lax.ragged_dot`, unsort, weight, sum over k."""
    return _experts_ragged_local(x, weights, expert_ids, w_gate, w_up, w_down, 0)


def experts_gather(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
) -> jax.Array:
    """Gather each assignment's expert weights ([N, k, D, F]) and einsum: for a handful of tokens."""
    dt = x.dtype
    wg = jnp.take(w_gate, expert_ids, axis=0).astype(dt)
    wu = jnp.take(w_up, expert_ids, axis=0).astype(dt)
    wd = jnp.take(w_down, expert_ids, axis=0).astype(dt)
    h = jax.nn.silu(jnp.einsum("nd,nkdf->nkf", x, wg)) * jnp.einsum("nd,nkdf->nkf", x, wu)
    y = jnp.einsum("nkf,nkfd->nkd", h, wd)
    return _combine(y, weights)


DISPATCHES = {"dense": experts_dense, "ragged": experts_ragged, "gather": experts_gather}
# The pallas_kernels MoE kernels (`model/kernels.moe_experts`).
KERNEL_DISPATCHES = ("gemv", "gmm", "auto")


def kernel_local_slots(x, weights, expert_ids, w_gate, w_up, w_down, expert_offset, *, dispatch, kc) -> jax.Array:
    """The MoE kernels' slot outputs float32 [N, k, D] of experts [offset, offset + E_local) (the others'
    slots are zero): `dispatch` gemv, gmm or auto (`model/kernels.moe_expert_slots`)."""
    del weights  # applied by `kernels_lib.moe_combine`, after the shards' slots are summed
    return kernels_lib.moe_expert_slots(x, expert_ids - expert_offset, w_gate, w_up, w_down, dispatch, kc)


# ----------------------------------------------------------------------------------------------
# Expert parallelism


def _mesh_axes(logical: str, mesh) -> tuple[str, ...]:
    """The mesh axes the active logical rules map `logical` to, keeping only the mesh's non-manual axes."""
    spec = nn.logical_to_mesh_axes((logical,))
    entry = spec[0] if spec is not None and len(spec) else None
    if entry is None:
        return ()
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    return tuple(a for a in axes if a in types and types[a] != jax.sharding.AxisType.Manual)


def _dividing(axes: Sequence[str], mesh, size: int) -> tuple[str, ...]:
    """The axes (in order) kept while their product still divides `size` (others replicate)."""
    kept, prod = [], 1
    for a in axes:
        if size % (prod * mesh.shape[a]) == 0:
            kept.append(a)
            prod *= mesh.shape[a]
    return tuple(kept)


def _spec_entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def expert_parallel_axes(n_experts: int) -> tuple[str, ...]:
    """The mesh axes (size > 1) the 'exp' rule shards experts over under the current mesh; () if none.

    Raises ValueError when the expert count does not divide by their size.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    axes = tuple(a for a in _mesh_axes("exp", mesh) if mesh.shape[a] > 1)
    ep = math.prod(mesh.shape[a] for a in axes)
    if n_experts % ep:
        raise ValueError(
            f"model.n_experts={n_experts} is not divisible by the {ep} devices of mesh axes {list(axes)} "
            "that the logical axis 'exp' is sharded over; make n_experts a multiple of it or change the mesh"
        )
    return axes


class _ParallelLayout(NamedTuple):
    """How tokens and expert weights split over the mesh inside the expert-parallel shard_map."""

    ep_axes: tuple[str, ...]  # the 'exp' axes: experts in contiguous blocks of n_local
    token_axes: tuple[str, ...]  # the axes splitting the tokens (batch, then length)
    gather_axes: tuple[str, ...]  # weight-sharding axes that also split tokens
    sum_axes: tuple[str, ...]  # weight-sharding axes that do not (partial results are psummed)
    n_local: int
    specs: tuple  # (tokens, w_gate/w_up, w_down)

    def shard_map(self, fn, check_vma: bool):
        tok, up, down = self.specs
        return jax.shard_map(
            fn,
            mesh=jax.sharding.get_abstract_mesh(),
            in_specs=(tok, tok, tok, up, up, down),
            out_specs=tok,
            check_vma=check_vma,
        )


def _parallel_layout(x_shape: tuple[int, ...], w_gate_shape: tuple[int, ...]) -> _ParallelLayout:
    """The layout for tokens x [B, T, D] and w_gate [E, D, F] under the current mesh and logical rules."""
    mesh = jax.sharding.get_abstract_mesh()
    b, t, _ = x_shape
    n_experts, _, f = w_gate_shape
    ep_axes = expert_parallel_axes(n_experts)
    mlp_axes = _dividing([a for a in _mesh_axes("exp_mlp", mesh) if a not in ep_axes], mesh, f)
    used = set(ep_axes) | set(mlp_axes)
    batch_axes = _dividing(_mesh_axes("act_batch", mesh), mesh, b)
    len_axes = _dividing([a for a in _mesh_axes("act_len", mesh) if a not in batch_axes], mesh, t)
    token_axes = batch_axes + len_axes
    weight_axes = ep_axes + mlp_axes
    return _ParallelLayout(
        ep_axes=ep_axes,
        token_axes=token_axes,
        gather_axes=tuple(a for a in token_axes if a in used),
        sum_axes=tuple(a for a in weight_axes if a not in token_axes),
        n_local=n_experts // math.prod(mesh.shape[a] for a in ep_axes),
        specs=(
            jax.P(_spec_entry(batch_axes), _spec_entry(len_axes), None),
            jax.P(_spec_entry(ep_axes), None, _spec_entry(mlp_axes)),
            jax.P(_spec_entry(ep_axes), _spec_entry(mlp_axes), None),
        ),
    )


def _no_finish(partial: jax.Array, weights: jax.Array) -> jax.Array:
    del weights
    return partial


def experts_parallel(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
    local=_experts_ragged_local,
    finish=_no_finish,
    check_vma: bool = True,
) -> jax.Array:
    """A dispatch with experts sharded over the mesh axes of the 'exp' rule (inside shard_map).

    `local(x, weights, expert_ids, w_gate, w_up, w_down, expert_offset)` computes the shard's experts'
    share of its tokens' result (float32 [N, ...], summed over shards); `finish(total, weights)` turns
    the summed share of the shard's own tokens into [N, D]. The ragged dispatch sums combined outputs
    (`_experts_ragged_local`, no finish); the kernel dispatch sums the unweighted slot outputs, each of
    which one shard computes alone, and combines after, so its result does not depend on the mesh.

    `check_vma=False` is for the kernels: a `pallas_call` under the varying-manual-axes check needs its
    outputs' type spelled out, and JAX 0.10's Pallas interpreter fails the check on its own loop
    indices. The tests pin the unchecked path's gradients to the dense dispatch's.

    x [B, T, D], weights/expert_ids [B, T, k]; returns float32 [B, T, D]. Must run under a mesh
    (`jax.set_mesh`) and logical axis rules. Specs come from the rules: tokens are split over the
    'act_batch' (dim 0) and 'act_len' (dim 1) axes, experts over the 'exp' axes as contiguous blocks of
    E/ep, and the expert hidden size over the 'exp_mlp' axes. Inside each shard:

    1. tokens (and their weights and ids) are all-gathered (tiled) over every weight-sharding axis that
       also splits tokens (e.g. 'expert' when it is part of the batch rule);
    2. only the local experts' assignments are computed (`local`);
    3. the partial outputs are summed over the weight-sharding axes: `psum_scatter` (tiled) over the
       gathered ones, which hands each shard back its own tokens, `psum` over the rest (e.g. the
       tensor axis splitting F in the down-projection); then `finish`.

    `experts_all_to_all` is the other way (`model.expert_parallel: all_to_all`): each assignment is
    sent only to the shard owning its expert.
    """
    layout = _parallel_layout(x.shape, w_gate.shape)
    d = x.shape[-1]
    gather_axes, sum_axes, ep_axes, n_local = layout.gather_axes, layout.sum_axes, layout.ep_axes, layout.n_local

    def shard(x, weights, expert_ids, w_gate, w_up, w_down):
        bl, tl, _ = x.shape
        k = expert_ids.shape[-1]
        x, own_weights, expert_ids = x.reshape(-1, d), weights.reshape(-1, k), expert_ids.reshape(-1, k)
        weights = own_weights
        if gather_axes:
            x, weights, expert_ids = (jax.lax.all_gather(a, gather_axes, tiled=True) for a in (x, weights, expert_ids))
        if sum_axes:  # replicated over these, but each shard uses x for its own experts / F slice
            x = jax.lax.pcast(x, sum_axes, to="varying")
        offset = jax.lax.axis_index(ep_axes) * n_local
        y = local(x, weights, expert_ids, w_gate, w_up, w_down, offset)
        if gather_axes:
            y = jax.lax.psum_scatter(y, gather_axes, scatter_dimension=0, tiled=True)
        if sum_axes:
            y = jax.lax.psum(y, sum_axes)
        return finish(y, own_weights).reshape(bl, tl, d)

    return layout.shard_map(shard, check_vma)(x, weights, expert_ids, w_gate, w_up, w_down)


def ragged_rows(rows: jax.Array, group_sizes: jax.Array, w_gate, w_up, w_down) -> jax.Array:
    """The shard's experts over an expert-major buffer of rows [R, D] (`group_sizes` [E_local]) with
    `ragged_dot`, in the dtype of the rows (what the ragged dispatch computes before combining in
    float32, so sending it back in that dtype loses nothing)."""
    return _grouped_swiglu(rows, w_gate, w_up, w_down, group_sizes)


def kernel_rows(rows: jax.Array, group_sizes: jax.Array, w_gate, w_up, w_down, *, dispatch, kc) -> jax.Array:
    """`ragged_rows` with the MoE kernels (`dispatch` gemv, gmm or auto): float32 [R, D], zero past the
    filled rows."""
    expert_ids = xp.row_experts(group_sizes, rows.shape[0])[:, None]
    return kernels_lib.moe_expert_slots(rows, expert_ids, w_gate, w_up, w_down, dispatch, kc)[:, 0]


def _slots(slots: jax.Array, weights: jax.Array) -> jax.Array:
    del weights  # the kernels combine after the shards' slots are summed (`kernels_lib.moe_combine`)
    return slots


def _ragged_exchange():
    """`jax.lax.ragged_all_to_all` on TPU and GPU; on XLA:CPU, which cannot run it, its all-gather
    emulation (same results, more bytes: for testing the all-to-all path on CPU meshes). The platform is
    the mesh's, so a deviceless TPU compile on a CPU host gets the real collective."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return xp.ragged_all_to_all_emulated if platform == "cpu" else jax.lax.ragged_all_to_all


def _blank_like(rows: jax.Array, n_rows: int) -> jax.Array:
    """Zeros [n_rows, D] for an exchange to write into, varying over the same mesh axes as `rows` and
    without a gradient: an invariant buffer would be cast to varying at the collective, and the
    backward pass would all-reduce its (unused) cotangent, a buffer-sized all-reduce per exchange."""
    zeros = jnp.zeros((n_rows, *rows.shape[1:]), rows.dtype)
    vma = tuple(sorted(jax.typeof(rows).mat.varying))  # JAX 0.10's spelling of an aval's `vma`
    return jax.lax.stop_gradient(jax.lax.pcast(zeros, vma, to="varying") if vma else zeros)


def exchanges_tokens(x_shape: tuple[int, ...], w_gate_shape: tuple[int, ...]) -> bool:
    """Whether the expert axes also split the tokens, so the all-to-all path has tokens to exchange
    (otherwise every expert shard already holds its group's tokens and the all-gather path gathers none)."""
    layout = _parallel_layout(x_shape, w_gate_shape)
    return bool(set(layout.ep_axes) & set(layout.token_axes))


def experts_all_to_all(
    x: jax.Array,
    weights: jax.Array,
    expert_ids: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
    rows=ragged_rows,
    share=_combine,
    finish=_no_finish,
    check_vma: bool = True,
) -> jax.Array:
    """`experts_parallel` with each (token, slot) assignment sent only to the shard owning its expert,
    by `jax.lax.ragged_all_to_all`, and its output sent back (dropless; `model/expert_parallel.py` has
    the bookkeeping). Inside each shard:

    1. tokens are all-gathered over the weight-sharding axes other than the expert axes that split
       them (as `experts_parallel` does);
    2. the assignments are sorted by expert, every shard's per-expert counts all-gathered over the
       expert axes (ep·E int32), and the rows dispatched: each receiver's buffer is expert-major;
    3. `rows(buffer, group_sizes, w_gate, w_up, w_down)` computes them ([R, D]) and they go back;
    4. unsorted into slots [N, k, D], `share(slots, weights)` is the shard's share of its tokens' result
       (the ragged dispatch combines: `_combine`; the kernels keep the slots), summed as in
       `experts_parallel`: psum_scatter over step 1's axes, psum over the other weight axes (e.g. a
       tensor axis splitting F); then `finish(total, weights)`.

    Every expert axis must split the tokens (`exchanges_tokens` for some does; a ValueError for a mix).
    Runs under a mesh and logical axis rules; x [B, T, D], weights/expert_ids [B, T, k]; float32 [B, T, D].
    """
    layout = _parallel_layout(x.shape, w_gate.shape)
    ep_axes, n_local = layout.ep_axes, layout.n_local
    if not set(ep_axes) <= set(layout.token_axes):
        raise ValueError(
            f"model.expert_parallel=all_to_all: the expert axes {list(ep_axes)} must all split the tokens "
            f"(the 'act_batch' or 'act_len' rule), but the tokens are split over {list(layout.token_axes)}; "
            "add the expert axes to those rules or use model.expert_parallel=all_gather"
        )
    mesh = jax.sharding.get_abstract_mesh()
    ep = math.prod(mesh.shape[a] for a in ep_axes)
    other_gather_axes = tuple(a for a in layout.gather_axes if a not in ep_axes)
    sum_axes = layout.sum_axes
    n_experts, d = w_gate.shape[0], x.shape[-1]
    exchange = _ragged_exchange()

    def shard(x, weights, expert_ids, w_gate, w_up, w_down):
        bl, tl, _ = x.shape
        k = expert_ids.shape[-1]
        x, own_weights, expert_ids = x.reshape(-1, d), weights.reshape(-1, k), expert_ids.reshape(-1, k)
        weights = own_weights
        if other_gather_axes:
            x, weights, expert_ids = (
                jax.lax.all_gather(a, other_gather_axes, tiled=True) for a in (x, weights, expert_ids)
            )
        if sum_axes:  # replicated over these, but each shard uses x for its own F slice
            x = jax.lax.pcast(x, sum_axes, to="varying")
        n = x.shape[0]
        key = expert_ids.reshape(-1)
        # lax.sort, as in `_experts_ragged_local`, to keep the varying-manual-axes type
        order = jax.lax.sort((key, jnp.arange(n * k, dtype=jnp.int32)), num_keys=1, is_stable=True)[1]
        sent = jnp.take(x, order // k, axis=0)  # [N·k, D]: slice g holds the rows for expert g
        counts = jax.lax.all_gather(xp.assignment_counts(expert_ids, n_experts), ep_axes)  # [ep, E]
        index = jax.lax.axis_index(ep_axes)
        buffer = _blank_like(sent, xp.receive_capacity(n, k, ep, n_local))
        received = exchange(sent, buffer, *xp.dispatch_plan(counts, index, n_local), axis_name=ep_axes)
        computed = rows(received, xp.received_group_sizes(counts, index, n_local), w_gate, w_up, w_down)
        back = exchange(
            computed, _blank_like(computed, n * k), *xp.return_plan(counts, index, n_local), axis_name=ep_axes
        )
        inverse = jnp.zeros_like(order).at[order].set(jnp.arange(n * k, dtype=order.dtype))
        y = share(jnp.take(back, inverse, axis=0).reshape(n, k, d), weights)
        if other_gather_axes:
            y = jax.lax.psum_scatter(y, other_gather_axes, scatter_dimension=0, tiled=True)
        if sum_axes:
            y = jax.lax.psum(y, sum_axes)
        return finish(y, own_weights).reshape(bl, tl, d)

    return layout.shard_map(shard, check_vma)(x, weights, expert_ids, w_gate, w_up, w_down)


# ----------------------------------------------------------------------------------------------
# The module


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (plus an optional shared expert).

    `__call__(x [B, T, D], token_mask [B, T] bool) -> (y [B, T, D] in cfg.dtype, aux)` with
    aux = {'load_balance': f32 scalar, 'router_z': f32 scalar}; masked tokens are computed but do not
    count in the aux losses.
    Applied with the `intermediates` collection mutable (`step`'s probe), it also sows the router's
    softmax `router_probs` float32 [B, T, E] and the chosen `experts` int32 [B, T, top_k], best first.
    """

    cfg: ModelConfig
    kernels: KernelsConfig = kernels_lib.FAST

    @nn.compact
    def __call__(self, x: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.cfg
        b, t, d = x.shape
        n_experts, f = cfg.n_experts, cfg.expert_mlp
        if cfg.moe_dispatch not in (*DISPATCHES, *KERNEL_DISPATCHES):
            raise ValueError(f"model.moe_dispatch={cfg.moe_dispatch!r} is not one of {sorted(DISPATCHES)}")
        dt = layers.compute_dtype(cfg.dtype)
        act = ("act_batch", "act_len", "act_embed")
        x = nn.with_logical_constraint(x, act)

        router = param(self, "router", (d, n_experts), ("embed", None))
        logits = jnp.einsum("btd,de->bte", x.astype(jnp.float32), router)
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", None))
        flat_logits = logits.reshape(b * t, n_experts)
        flat_mask = token_mask.reshape(b * t)
        weights, expert_ids = route(flat_logits, cfg.top_k, cfg.normalize_topk)
        router_probs = jax.nn.softmax(flat_logits, axis=-1)
        aux = {
            "load_balance": load_balance_loss(router_probs, expert_ids, flat_mask),
            "router_z": router_z_loss(flat_logits, flat_mask),
        }
        if self.is_mutable_collection("intermediates"):  # `step(..., probe=True)`; otherwise not even traced
            self.sow("intermediates", "router_probs", router_probs.reshape(b, t, n_experts))
            self.sow("intermediates", "experts", expert_ids.reshape(b, t, cfg.top_k))

        w_gate = param(self, "w_gate", (n_experts, d, f), ("exp", "embed", "exp_mlp"))
        w_up = param(self, "w_up", (n_experts, d, f), ("exp", "embed", "exp_mlp"))
        w_down = param(self, "w_down", (n_experts, f, d), ("exp", "exp_mlp", "embed"))

        xc = x.astype(dt)
        k = cfg.top_k
        kernel_slots = functools.partial(kernel_local_slots, dispatch=cfg.moe_dispatch, kc=self.kernels)
        expert_parallel = cfg.moe_dispatch in ("ragged", *KERNEL_DISPATCHES) and expert_parallel_axes(n_experts)
        if expert_parallel and cfg.expert_parallel == "all_to_all" and exchanges_tokens(xc.shape, w_gate.shape):
            kernel = cfg.moe_dispatch in KERNEL_DISPATCHES
            y = experts_all_to_all(
                xc,
                weights.reshape(b, t, k),
                expert_ids.reshape(b, t, k),
                w_gate,
                w_up,
                w_down,
                functools.partial(kernel_rows, dispatch=cfg.moe_dispatch, kc=self.kernels) if kernel else ragged_rows,
                _slots if kernel else _combine,
                kernels_lib.moe_combine if kernel else _no_finish,
                check_vma=not kernel,
            )
        elif expert_parallel:
            local, finish = (
                (kernel_slots, kernels_lib.moe_combine)
                if cfg.moe_dispatch in KERNEL_DISPATCHES
                else (_experts_ragged_local, _no_finish)
            )
            y = experts_parallel(
                xc,
                weights.reshape(b, t, k),
                expert_ids.reshape(b, t, k),
                w_gate,
                w_up,
                w_down,
                local,
                finish,
                check_vma=cfg.moe_dispatch not in KERNEL_DISPATCHES,
            )
        elif cfg.moe_dispatch in KERNEL_DISPATCHES:
            slots = kernel_slots(xc.reshape(b * t, d), weights, expert_ids, w_gate, w_up, w_down, 0)
            y = kernels_lib.moe_combine(slots, weights).reshape(b, t, d)
        else:
            y = DISPATCHES[cfg.moe_dispatch](xc.reshape(b * t, d), weights, expert_ids, w_gate, w_up, w_down)
            y = y.reshape(b, t, d)
        y = nn.with_logical_constraint(y, act)
        if cfg.shared_expert_mlp > 0:
            y = y + layers.MLP(hidden=cfg.shared_expert_mlp, dtype=cfg.dtype, name="shared")(xc).astype(jnp.float32)
        return nn.with_logical_constraint(y.astype(dt), act), aux
