"""`train_step(state, batch) -> (state, metrics)`: one optimizer update over a global batch of windows
(and one step of the parameters' moving average, when `train.ema_decay` keeps one).

Built on `train/loss.loss_fn` (over `model/step`, the one forward pass). With `train.grad_accum` = n the
batch is cut into n microbatches whose gradients are averaged in a `lax.scan`, so a batch that does not fit
in memory trains with the same update (up to float summation order) as one that does.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from interaction_jax import sharding
from interaction_jax.config import Config
from interaction_jax.train import loss as loss_lib
from interaction_jax.train.optimizer import learning_rate
from interaction_jax.train.state import TrainState

# Batch entries that are bookkeeping, not model input.
NON_MODEL_KEYS = ("task",)


def model_batch(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def microbatches(batch: dict, n: int) -> dict:
    """[B, …] → [n, B/n, …] with microbatch i = rows i, i+n, i+2n, …

    Strided rather than contiguous: the batch axis is sharded in contiguous blocks over devices, so each
    device then holds an equal share of every microbatch and none sits idle while another works.
    """

    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _grads(cfg: Config, params, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
    n = cfg.train.grad_accum
    grad_fn = jax.grad(lambda p, b, r: loss_lib.loss_fn(p, b, r, cfg=cfg), has_aux=True)
    if n == 1:
        return grad_fn(params, batch, rng)

    def body(acc, xs):
        i, micro = xs
        micro = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("act_batch",) + (None,) * (x.ndim - 1)), micro)
        grads, metrics = grad_fn(params, micro, jax.random.fold_in(rng, i))
        acc = jax.tree.map(lambda a, g: a + g / n, acc, grads)
        return acc, metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, metrics = jax.lax.scan(body, zeros, (jnp.arange(n), microbatches(batch, n)))
    rows = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1), metrics.pop("rows"))  # back to batch order
    return grads, jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics) | {"rows": rows}


def train_step(state: TrainState, batch: dict, *, cfg: Config, optimizer: optax.GradientTransformation):
    """One update. Metrics: the loss terms, text accuracy, learning rate and the gradient's global norm."""
    rng = state.step_rng()
    grads, metrics = _grads(cfg, state.params, model_batch(batch), rng)
    metrics.pop("rows")
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics | {"grad_norm": optax.tree_utils.tree_norm(grads), "lr": learning_rate(cfg.train)(state.step)}
    ema = None if state.ema_params is None else moving_average(state.ema_params, params, cfg.train.ema_decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics


def moving_average(average, params, decay: float):
    """One step of the parameters' exponential moving average: decay · average + (1 − decay) · params."""
    return jax.tree.map(lambda a, p: (decay * a + (1.0 - decay) * p).astype(a.dtype), average, params)


def eval_step(params, batch: dict, *, cfg: Config) -> dict:
    """Loss metrics of a held-out batch (no update), with the per-row sums and the rows' tasks."""
    _, metrics = loss_lib.loss_fn(params, model_batch(batch), jax.random.key(0), cfg=cfg)
    return metrics | {"task": batch["task"]}


def batch_shardings(batch: dict, mesh: Mesh, cfg: Config) -> dict:
    """Rows over the mesh axes `act_batch` maps to, everything else replicated (as `shard_batch` puts them)."""
    return {
        k: sharding.logical_sharding(("act_batch",) + (None,) * (v.ndim - 1), mesh, cfg.mesh) for k, v in batch.items()
    }


def jit_train_step(cfg: Config, optimizer, mesh: Mesh, state_shardings: TrainState, example_batch: dict):
    """`train_step` jitted with explicit in/out shardings, donating the old state (updated in place)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(
        functools.partial(train_step, cfg=cfg, optimizer=optimizer),
        in_shardings=(state_shardings, batch_shardings(example_batch, mesh, cfg)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return _in_mesh(fn, mesh, cfg)


def jit_eval_step(cfg: Config, mesh: Mesh, state_shardings: TrainState, example_batch: dict):
    fn = jax.jit(
        functools.partial(eval_step, cfg=cfg),
        in_shardings=(state_shardings.params, batch_shardings(example_batch, mesh, cfg)),
    )
    return _in_mesh(fn, mesh, cfg)


def _in_mesh(fn, mesh: Mesh, cfg: Config):
    """Call `fn` under the mesh and its logical rules, so the model's activation constraints apply."""

    @functools.wraps(fn)
    def call(*args):
        with sharding.mesh_context(mesh, cfg.mesh):
            return fn(*args)

    return call
