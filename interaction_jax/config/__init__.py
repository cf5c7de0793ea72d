"""The configuration tree: frozen dataclasses, presets, YAML files, `a.b=c` overrides, validation.

Everything that shapes a compiled program lives here, so a config fully determines a run. Configs are
immutable: `override(cfg, ["model.d_model=256"])` and `dataclasses.replace` return new trees.
`validate(cfg, num_devices)` runs before anything is traced and names the offending key and the fix.

- `tree`: the dataclasses, each section with the checks of its own fields (`setting`, `check`)
- `presets`: `tiny`, `small`, `base`, `tml-small-shape`
- `loading`: dicts, YAML and overrides, type-checked against the fields; `dump_yaml`
- `mesh`: how many devices a mesh runs on and its axis sizes (the one place that is worked out)
- `checks`: `validate`, and the checks that need two sections or the device count

The package imports nothing of `interaction_jax.data` (nor JAX).
"""

from interaction_jax.config.checks import check_across_sections, check_on_devices, validate
from interaction_jax.config.loading import dump_yaml, from_dict, load_mesh, load_yaml, merge_rules, override, to_dict
from interaction_jax.config.mesh import axes_size, mesh_device_count, mesh_slices, resolve_axis_sizes
from interaction_jax.config.presets import PRESETS, preset
from interaction_jax.config.tree import (
    DEFAULT_SCENARIOS,
    MESH_AXES,
    PATCH_SIZE,
    TRAINING_SERVE_KEYS,
    AxisSizes,
    Config,
    ConfigError,
    DataConfig,
    KernelChoice,
    KernelsConfig,
    LogicalRules,
    MeshConfig,
    ModelConfig,
    ServeConfig,
    StreamConfig,
    TrainConfig,
    check_bounds,
    setting,
)

__all__ = [
    "DEFAULT_SCENARIOS",
    "MESH_AXES",
    "PATCH_SIZE",
    "PRESETS",
    "TRAINING_SERVE_KEYS",
    "AxisSizes",
    "Config",
    "ConfigError",
    "DataConfig",
    "KernelChoice",
    "KernelsConfig",
    "LogicalRules",
    "MeshConfig",
    "ModelConfig",
    "ServeConfig",
    "StreamConfig",
    "TrainConfig",
    "axes_size",
    "check_across_sections",
    "check_bounds",
    "check_on_devices",
    "dump_yaml",
    "from_dict",
    "load_mesh",
    "load_yaml",
    "merge_rules",
    "mesh_device_count",
    "mesh_slices",
    "override",
    "preset",
    "resolve_axis_sizes",
    "setting",
    "to_dict",
    "validate",
]
