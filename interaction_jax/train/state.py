"""The train state — params, optimizer state, step, RNG, and optionally a moving average of the params —
created already sharded on a mesh.

The RNG is a raw uint32 key (`jax.random.key_data`), so the whole state is plain arrays that orbax saves
and restores like any other; each step draws `fold_in(rng, step)`, which makes the randomness of a step a
function of the step alone (a resumed run repeats it exactly).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from interaction_jax import sharding
from interaction_jax.config import Config
from interaction_jax.model import step as step_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: optimizer updates applied so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data
    # The exponential moving average of `params` (train.ema_decay > 0), laid out and sharded as they are;
    # None (no leaves: nothing saved) when none is kept.
    ema_params: Any = None

    def eval_params(self) -> Any:
        """The parameters evaluation reads: the average when one is kept, else the trained ones."""
        return self.params if self.ema_params is None else self.ema_params

    def step_rng(self) -> jax.Array:
        """The key of the step about to run: a function of (seed, step) only."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def _create(cfg: Config, optimizer: optax.GradientTransformation, rng: jax.Array, boxed: bool = False) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = step_lib.init_variables(cfg, init_rng)
    params = variables["params"] if boxed else flax.linen.meta.unbox(variables)["params"]
    opt_state = optimizer.init(flax.linen.meta.unbox(params) if boxed else params)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema_decay > 0 else None  # the average starts at the init
    return TrainState(jnp.int32(0), params, opt_state, jax.random.key_data(state_rng), ema)


def state_shardings(cfg: Config, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """NamedShardings of every leaf of the train state on `mesh` (from shapes only: nothing is computed).

    Parameters follow their logical axis names; optimizer moments mirror the parameter they belong to
    (`optax.tree_map_params`); counters and the RNG are replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    with sharding.mesh_context(mesh, cfg.mesh):
        boxed = jax.eval_shape(lambda: _create(cfg, optimizer, jax.random.key(0), boxed=True))
        params = sharding.tree_shardings(boxed.params, mesh, cfg.mesh)
    abstract_params = flax.linen.meta.unbox(boxed.params)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_opt,
        params,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(replicated, params, opt, replicated, params if cfg.train.ema_decay > 0 else None)


def abstract_state(cfg: Config, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """The train state as `jax.ShapeDtypeStruct`s carrying their target shardings (for orbax restore)."""
    shapes = jax.eval_shape(lambda: _create(cfg, optimizer, jax.random.key(0)))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        state_shardings(cfg, optimizer, mesh),
    )


def init_state(cfg: Config, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """A fresh train state from `train.seed`, every leaf born on its devices (no full copy anywhere)."""
    shardings = state_shardings(cfg, optimizer, mesh)
    with sharding.mesh_context(mesh, cfg.mesh):
        create = jax.jit(lambda rng: _create(cfg, optimizer, rng), out_shardings=shardings)
        return create(jax.random.key(cfg.train.seed))
