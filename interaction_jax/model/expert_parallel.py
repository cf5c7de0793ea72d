"""The bookkeeping of all-to-all expert parallelism (`model.expert_parallel: all_to_all`, DESIGN §7).

Inside the MoE's `shard_map`, each of the `ep` expert shards holds n_local = E / ep experts (shard s:
experts [s·n_local, (s+1)·n_local)) and its own tokens. Sorted stably by expert, a shard's N·k
(token, slot) assignments form E consecutive slices, slice g holding the rows routed to expert g, and
slice g belongs to shard g // n_local: exactly `jax.lax.ragged_all_to_all`'s layout with E slices,
n_local per destination. Each receiver places what it gets expert-major (every row for its first
expert, from shard 0, 1, … in order, then its second expert's, …), so its buffer is already grouped
for `ragged_dot` with group sizes Σ_s counts[s, g]: no sort on the receiving side. The way back is the
same exchange transposed, and lands each row where the sender's sorted layout had it.

Everything here is a pure function of `counts` [ep, E] (counts[s, g]: how many of shard s's
assignments go to expert g; each shard all-gathers its row, ep·E int32) and the shard's index, so the
tests check it on CPU against a numpy simulation of the exchange.

Bytes per device and MoE layer (forward; the backward mirrors it): the all-gather path moves every
token to every expert shard, (ep - 1)·N rows of x in the compute dtype out and as many float32 rows back
(its reduce-scatter sums combined outputs); this path sends each assignment only to its expert's shard,
about (ep - 1)/ep · k·N rows each way under balanced routing, in the compute dtype (the ragged dispatch's
outputs are in it; the kernels' come back float32). With bfloat16 that is 2k/(3·ep) of the all-gather
path's bytes: fewer only when ep > 2k/3 (an expert axis of 6 or more for tml-small-shape's k = 8; not the
4 of mesh_configs/tpu-v5p-128.yaml). And the routing decides: with everything routed to one shard's
experts, that shard receives ep times the balanced figure. Dropless and exact, the receive buffer is
sized for the worst case (`receive_capacity`, the size of the all-gather path's routed-token buffer),
and that static size is what the compiled HLO shows, not the rows that cross the links.

XLA:CPU cannot run `ragged_all_to_all`; `ragged_all_to_all_emulated` computes its result with
all-gathers, so the same code runs (and is tested) on CPU meshes, moving more bytes than either path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ExchangePlan(NamedTuple):
    """The four index arrays of one `jax.lax.ragged_all_to_all` call, int32 [E] each (slice i goes to,
    or comes from, shard i // n_local)."""

    input_offsets: jax.Array
    send_sizes: jax.Array
    output_offsets: jax.Array
    recv_sizes: jax.Array


def _exclusive_cumsum(a: jax.Array, axis: int) -> jax.Array:
    return jnp.cumsum(a, axis=axis) - a


def assignment_counts(expert_ids: jax.Array, n_experts: int) -> jax.Array:
    """How many of the (token, slot) assignments `expert_ids` [N, k] go to each expert: int32 [E]."""
    return jnp.bincount(expert_ids.reshape(-1), length=n_experts).astype(jnp.int32)


def _own_experts(counts: jax.Array, shard: jax.Array | int, n_local: int) -> jax.Array:
    """counts[:, shard's experts]: [ep, n_local], what each shard routes to each of `shard`'s experts."""
    return jax.lax.dynamic_slice_in_dim(counts, shard * n_local, n_local, axis=1)


def receive_capacity(n_tokens: int, top_k: int, ep: int, n_local: int) -> int:
    """Rows a shard's receive buffer needs so that no routing drops a token: a token's k experts are
    distinct, so at most min(k, n_local) of its assignments reach one shard, from each of ep shards' N."""
    return ep * n_tokens * min(top_k, n_local)


def received_group_sizes(counts: jax.Array, shard: jax.Array | int, n_local: int) -> jax.Array:
    """Rows the receive buffer of `shard` holds for each of its experts, in order: int32 [n_local]."""
    return jnp.sum(_own_experts(counts, shard, n_local), axis=0)


def row_experts(group_sizes: jax.Array, n_rows: int) -> jax.Array:
    """The local expert of each row of an expert-major buffer with `group_sizes`; len(group_sizes) for
    the unfilled rows after them (an id the MoE kernels give a zero slot). int32 [n_rows]."""
    ends = jnp.cumsum(group_sizes)
    return jnp.searchsorted(ends, jnp.arange(n_rows, dtype=ends.dtype), side="right").astype(jnp.int32)


def dispatch_plan(counts: jax.Array, shard: jax.Array | int, n_local: int) -> ExchangePlan:
    """Shard `shard` sends its expert-sorted assignments, slice g (expert g) to shard g // n_local, where
    they land expert-major: after every row of the receiver's lower experts, and after the rows of
    expert g from lower-numbered shards."""
    ep, n_experts = counts.shape
    own = counts[shard]
    per_expert = jnp.sum(counts, axis=0).reshape(ep, n_local)  # rows each expert receives, by shard
    expert_starts = _exclusive_cumsum(per_expert, axis=1).reshape(n_experts)  # within its shard's buffer
    from_lower_shards = _exclusive_cumsum(counts, axis=0)[shard]
    return ExchangePlan(
        input_offsets=_exclusive_cumsum(own, axis=0),
        send_sizes=own,
        output_offsets=expert_starts + from_lower_shards,
        # slice s·n_local + e: what shard s sends for this shard's expert e
        recv_sizes=_own_experts(counts, shard, n_local).reshape(ep * n_local),
    )


def return_plan(counts: jax.Array, shard: jax.Array | int, n_local: int) -> ExchangePlan:
    """`dispatch_plan` transposed: shard `shard` sends each received slice (sender s, its expert e) back to
    s, into the place s's sorted layout had it; it gets back exactly the rows it sent."""
    n_experts = counts.shape[1]
    received = _own_experts(counts, shard, n_local)  # [ep, n_local]
    expert_starts = _exclusive_cumsum(jnp.sum(received, axis=0), axis=0)
    sender_starts = _exclusive_cumsum(counts, axis=1)  # where each shard's slice g began in its layout
    return ExchangePlan(
        input_offsets=(expert_starts[None, :] + _exclusive_cumsum(received, axis=0)).reshape(n_experts),
        send_sizes=received.reshape(n_experts),
        output_offsets=_own_experts(sender_starts, shard, n_local).reshape(n_experts),
        recv_sizes=counts[shard],  # slice g comes back from shard g // n_local: the rows sent to expert g
    )


def ragged_all_to_all_emulated(
    operand: jax.Array,
    output: jax.Array,
    input_offsets: jax.Array,
    send_sizes: jax.Array,
    output_offsets: jax.Array,
    recv_sizes: jax.Array,
    *,
    axis_name,
) -> jax.Array:
    """`jax.lax.ragged_all_to_all`'s result, built from all-gathers (XLA:CPU has no ragged all-to-all).

    Every shard gathers every operand and plan and scatters into `output` the slices addressed to it.
    The senders' sizes place the rows; `recv_sizes` is unused (the real collective needs it to equal
    the senders' send_sizes, which the tests check of the plans). Differentiable like the real one.
    """
    del recv_sizes
    n_shards = jax.lax.axis_size(axis_name)
    operands = jax.lax.all_gather(operand, axis_name)  # [ep, R, ...]
    starts, sizes, dests = (jax.lax.all_gather(a, axis_name) for a in (input_offsets, send_sizes, output_offsets))
    per_shard = input_offsets.shape[0] // n_shards
    mine = jax.lax.axis_index(axis_name) * per_shard + jnp.arange(per_shard)  # slices addressed to this shard
    starts, sizes, dests = (jnp.take(a, mine, axis=1)[:, :, None] for a in (starts, sizes, dests))  # [ep, P, 1]
    n_rows = operand.shape[0]
    rows = jnp.arange(n_rows)
    inside = (rows >= starts) & (rows < starts + sizes)  # [ep, P, R]: row r of shard s is in its slice p
    target = jnp.where(inside, dests + rows - starts, output.shape[0])  # out of bounds: dropped
    source = jnp.broadcast_to(jnp.arange(n_shards)[:, None, None] * n_rows + rows, target.shape)
    values = jnp.take(operands.reshape(n_shards * n_rows, *operand.shape[1:]), source.reshape(-1), axis=0)
    return output.at[target.reshape(-1)].set(values.astype(output.dtype), mode="drop")
