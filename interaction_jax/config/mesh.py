"""How many devices a mesh config runs on, and the size of each of its axes.

The one place this is worked out: `plan`, `sweep`, the pod commands, `plan --compile`, `sharding.make_mesh`
and `validate` all ask here. Pure arithmetic on the config, so it lives in the config package rather than in
`sharding.py`: `sharding` imports the config (and JAX, which the sweep and pod commands must not load), and
`validate` resolves a mesh against a device count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from interaction_jax.config.tree import MESH_AXES, ConfigError, MeshConfig


def mesh_device_count(mesh: MeshConfig, num_devices: int | None = None) -> tuple[int, bool]:
    """(devices, fixed): how many devices a mesh config runs on, and whether that count is settled.

    `num_devices` (the caller's own count) settles it when given. Else the axis sizes × dcn do, unless an
    axis is -1: then the count is the fewest devices the mesh allows (any multiple fits), not settled, and
    the caller decides (the devices it sees, or the pod's hosts).
    """
    if num_devices:
        return num_devices, True
    open_axis = any(getattr(mesh.axes, a) == -1 for a in MESH_AXES)
    return math.prod(abs(getattr(mesh.axes, a)) * getattr(mesh.dcn, a) for a in MESH_AXES), not open_axis


def mesh_slices(mesh: MeshConfig) -> int:
    """How many slices (ICI domains joined over DCN) a mesh config spans: the product of its dcn sizes."""
    return math.prod(getattr(mesh.dcn, a) for a in MESH_AXES)


def resolve_axis_sizes(mesh: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes with -1 resolved against the device count (dcn sizes multiplied in).

    This is where `mesh.axes.*` and `mesh.dcn.*` are checked: whether a size is sound depends on the count.
    """
    sizes = {a: getattr(mesh.axes, a) * getattr(mesh.dcn, a) for a in MESH_AXES}
    for a in MESH_AXES:
        if getattr(mesh.axes, a) == 0 or getattr(mesh.axes, a) < -1:
            raise ConfigError(f"mesh.axes.{a}", f"size {getattr(mesh.axes, a)} is invalid", "use a positive size or -1")
        if getattr(mesh.dcn, a) < 1:
            raise ConfigError(f"mesh.dcn.{a}", f"size {getattr(mesh.dcn, a)} is invalid", "use a positive size")
    rest = [a for a in MESH_AXES if getattr(mesh.axes, a) == -1]
    if len(rest) > 1:
        raise ConfigError(f"mesh.axes.{rest[1]}", "only one axis may be -1", "give the others explicit sizes")
    fixed = math.prod(abs(s) for a, s in sizes.items() if a not in rest)
    if rest:
        a = rest[0]
        dcn = getattr(mesh.dcn, a)
        if num_devices % (fixed * dcn):
            raise ConfigError(
                f"mesh.axes.{a}",
                f"{num_devices} devices do not split into the fixed axes ({fixed}) × dcn ({dcn})",
                "change the explicit axis sizes so they divide the device count",
            )
        sizes[a] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        given = " × ".join(f"{a} {s}" for a, s in sizes.items() if s != 1) or "1"
        raise ConfigError(
            "mesh.axes",
            f"the axes multiply to {total} ({given}) but there are {num_devices} devices",
            f"make the sizes multiply to {num_devices}, or set one axis to -1, or pick another mesh config",
        )
    return sizes


def axes_size(sizes: Mapping[str, int], axes: tuple[str, ...] | list[str]) -> int:
    """How many devices a dimension mapped onto mesh `axes` is split over (`sizes`: `resolve_axis_sizes`)."""
    return math.prod(sizes[a] for a in axes)
