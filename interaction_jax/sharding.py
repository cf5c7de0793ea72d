"""Device meshes and logical-axis sharding (DESIGN §7).

The model names every parameter and activation dimension with a *logical* axis (`embed`, `act_batch`,
…); a `MeshConfig` maps those names onto the five mesh axes (`config.MESH_AXES`). This module turns a
`MeshConfig` into a `jax.sharding.Mesh`, into Flax logical-axis rules, and into `NamedSharding`s, and
creates parameters already sharded so that no device ever holds a full unsharded copy.

Everything is a pure function of (mesh config, mesh); `mesh_context` is the one place that activates
sharding for model code (`nn.with_logical_constraint` is a no-op outside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from interaction_jax import config
from interaction_jax.config import ConfigError, MeshConfig

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """The device mesh for `mesh_cfg`, with axes in `config.MESH_AXES` order, all of type Auto.

    Sizes are resolved by `config.resolve_axis_sizes` first (the one place a mesh's device count and axis
    sizes are worked out, `config/mesh.py`), so a config that does not fit the device count fails here with
    a ConfigError naming `mesh.axes`, before anything is traced or compiled.
    Axis types are given explicitly because `jax.make_mesh` now defaults to Explicit axes, while this
    code base relies on Auto (GSPMD-propagated) sharding plus logical constraints.

    Device order:
    - dcn sizes > 1 and devices that carry `slice_index` (multi-slice TPU): the ICI part of each axis
      is laid out within a slice and the DCN part across slices (`create_hybrid_device_mesh`), so only
      the dcn axes pay for the slow inter-slice network.
    - dcn sizes > 1 without `slice_index` (CPU, or planning a multi-slice run on fake devices): a plain
      device grid in which "slice" i is the i-th contiguous block of the device list, matching how
      the hybrid mesh nests slices (each axis = dcn outer × ici inner). Nothing is faster or slower
      here; the point is that the shapes, specs and compiled program are the same.
    - otherwise: `jax.make_mesh`, which orders devices to follow the physical topology where it
      knows it (TPU) and falls back to a plain grid elsewhere. On a TPU torus whose axes the mesh sizes
      are no products of (tensor 4 × fsdp 16 × expert 8 on v5p's 8x8x8), physical axes are split
      (`allow_split_physical_axes`), as MaxText allows: rings shorter than a torus axis, still ICI.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.resolve_axis_sizes(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in config.MESH_AXES)
    dcn = tuple(getattr(mesh_cfg.dcn, a) for a in config.MESH_AXES)
    ici = tuple(s // d for s, d in zip(shape, dcn, strict=True))
    axis_types = (jax.sharding.AxisType.Auto,) * len(config.MESH_AXES)
    slices = config.mesh_slices(mesh_cfg)
    if slices == 1:
        try:
            return jax.make_mesh(shape, config.MESH_AXES, axis_types=axis_types, devices=devices)
        except NotImplementedError:  # an axis that is no product of whole torus axes (tensor 4 on 8x8x8)
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
            return Mesh(grid, config.MESH_AXES, axis_types=axis_types)
    if all(hasattr(d, "slice_index") for d in devices):
        n_slices = len({d.slice_index for d in devices})
        if n_slices != slices:
            raise ConfigError(
                "mesh.dcn",
                f"the dcn sizes multiply to {slices} but the devices span {n_slices} slice(s)",
                f"make the dcn sizes multiply to {n_slices}, or pick another mesh config",
            )
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        n = len(shape)
        grid = np.asarray(devices, dtype=object).reshape(dcn + ici)
        grid = grid.transpose([j for i in range(n) for j in (i, n + i)]).reshape(shape)
    return Mesh(grid, config.MESH_AXES, axis_types=axis_types)


def axis_rules(mesh_cfg: MeshConfig, mesh: Mesh | None = None) -> Rules:
    """The config's rules in the form `nn.logical_axis_rules` wants: None, one axis name, or a tuple.

    With `mesh`, mesh axes of size 1 are dropped from every rule. They shard nothing, and dropping
    them (a) keeps specs minimal, e.g. `P(None, 'tensor')` rather than `P('fsdp', 'tensor')` when fsdp
    is 1, and (b) stops a size-1 axis from blocking another dimension: Flax gives a mesh axis to at most
    one dimension of a tensor, all-or-nothing per rule, so a rule `embed → fsdp` would otherwise stop
    `act_batch → (data, fsdp, expert)` from applying at all on a tensor carrying both names.
    Rule order is kept, since Flax treats it as priority.
    """
    mesh_cfg.check_rules()
    rules = []
    for name, axes in mesh_cfg.rules:
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else tuple(axes)))
    return tuple(rules)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, mesh_cfg: MeshConfig) -> Iterator[Mesh]:
    """Activate `mesh` and its logical-axis rules together; the one way code turns sharding on.

    Entering both at once matters: `nn.with_logical_constraint` needs the rules to translate names and
    a current mesh to constrain against, and silently does nothing when either is missing.
    Note that jit's cache is keyed on the mesh but not on the Flax rules (a thread-local), so don't
    call one jitted function under different rules with the same mesh.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules(mesh_cfg, mesh)):
        yield mesh


def logical_sharding(logical_axes: tuple, mesh: Mesh, mesh_cfg: MeshConfig) -> NamedSharding:
    """The NamedSharding of an array whose dimensions carry `logical_axes` (None: replicated)."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), axis_rules(mesh_cfg, mesh))
    return NamedSharding(mesh, spec)


def is_logical_axes(x: Any) -> bool:
    """Whether `x` is one array's logical axes: a tuple of names / None (not a tuple of subtrees)."""
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def axes_tree_shardings(axes_tree: Any, mesh: Mesh, mesh_cfg: MeshConfig) -> Any:
    """NamedShardings for a pytree whose leaves are logical-axes tuples (e.g. `cache_logical_axes`)."""
    return jax.tree.map(lambda axes: logical_sharding(axes, mesh, mesh_cfg), axes_tree, is_leaf=is_logical_axes)


def tree_shardings(tree: Any, mesh: Mesh, mesh_cfg: MeshConfig) -> Any:
    """NamedShardings for a pytree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Works on concrete or abstract (`jax.eval_shape`) trees. The result has the structure of the
    *unboxed* tree (each box becomes one NamedSharding), which is also a valid pytree prefix of the
    boxed tree. Leaves without logical names are replicated.
    """
    rules = axis_rules(mesh_cfg, mesh)
    specs = nn.get_partition_spec(tree)  # boxes → PartitionSpec(*names); plain arrays → PartitionSpec()
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, mesh_cfg: MeshConfig, *args: Any) -> tuple[Any, Any]:
    """Run `init_fn(*args)` so that its outputs are born sharded; return (unboxed params, shardings).

    `init_fn` returns a Flax variables dict whose leaves are `nn.LogicallyPartitioned` (made with
    `nn.with_logical_partitioning`). Its shapes come from `jax.eval_shape` (no FLOPs, no memory), the
    shardings from the logical names, and `jit(..., out_shardings=...)` then materialises each shard
    directly on its device — a model that does not fit on one device can still be initialised.
    Unboxing happens inside the jit, so callers get plain `jax.Array`s; the values equal an unsharded
    `init_fn(*args)` with the same RNG (sharding never changes what is computed).
    The whole thing runs inside `mesh_context`, so activation constraints traced during init apply too.
    """
    with mesh_context(mesh, mesh_cfg):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = tree_shardings(abstract, mesh, mesh_cfg)
        params = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def shard_batch(batch: dict[str, Any], mesh: Mesh, mesh_cfg: MeshConfig) -> dict[str, Any]:
    """Put a host batch (nested dict of numpy arrays) on the mesh: axis 0 by `act_batch`, the rest replicated.

    Scalars are replicated. The batch axis must divide evenly over the mesh axes `act_batch` maps to.
    Single process: `jax.device_put` of the global batch. Multi-process: each process passes only its
    own rows and they are assembled with `jax.make_array_from_process_local_data` into one global
    array of `process_count × local` rows (that path needs a multi-host run to be exercised).
    """
    n_proc = jax.process_count()

    def put(path: Any, x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        sharding = logical_sharding(("act_batch",) + (None,) * (x.ndim - 1), mesh, mesh_cfg)
        axes = sharding.spec[0] or ()
        axes = (axes,) if isinstance(axes, str) else axes
        n = config.axes_size(mesh.shape, axes)
        rows = x.shape[0] * n_proc
        if rows % n:
            raise ConfigError(
                "train.batch_size",
                f"batch entry {jax.tree_util.keystr(path)} has {rows} rows, not divisible by the {n} devices "
                f"of mesh axes {list(axes)} that 'act_batch' is sharded over",
                f"make the batch size a multiple of {n}, or change the mesh",
            )
        if n_proc == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)
