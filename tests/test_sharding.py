"""Mesh configs, mesh construction, logical-axis rules and sharded init on 8 fake CPU devices."""

import dataclasses
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from interaction_jax import config, sharding
from interaction_jax.config import ConfigError

MESH_DIR = Path(__file__).resolve().parent.parent / "mesh_configs"
# file → (intended device count, preset it is meant for)
INTENDED = {
    "cpu-1": (1, "tiny"),
    "cpu-8": (8, "tiny"),
    "gpu-1": (1, "small"),
    "gpu-8": (8, "base"),
    "tpu-v5e-8": (8, "small"),
    "tpu-v5e-16": (16, "base"),
    "tpu-v5p-128": (128, "tml-small-shape"),
    "tpu-v5p-1024": (512, "tml-small-shape"),
    "tpu-v6e-256": (256, "tml-small-shape"),
}
DEFAULT_RULE_NAMES = [name for name, _ in config.MeshConfig().rules]


def _load(name: str) -> config.MeshConfig:
    return config.load_mesh(MESH_DIR / f"{name}.yaml")


@pytest.fixture(scope="module")
def cpu8():
    cfg = _load("cpu-8")
    return sharding.make_mesh(cfg, jax.devices()[:8]), cfg


def test_mesh_dir_holds_exactly_the_intended_files():
    assert sorted(p.stem for p in MESH_DIR.glob("*.yaml")) == sorted(INTENDED)


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_mesh_yaml_loads_validates_and_resolves(name):
    path = MESH_DIR / f"{name}.yaml"
    assert path.read_text().startswith("#"), "each mesh config starts with a comment explaining it"
    mesh_cfg = config.load_mesh(path)
    assert mesh_cfg.name == name
    assert mesh_cfg.device_kind == name.split("-")[0]
    # every logical name of the default rules is covered, each exactly once, and the priority order kept
    assert [n for n, _ in mesh_cfg.rules] == DEFAULT_RULE_NAMES
    n_devices, preset_name = INTENDED[name]
    sizes = config.resolve_axis_sizes(mesh_cfg, n_devices)
    assert math.prod(sizes.values()) == n_devices
    cfg = dataclasses.replace(config.preset(preset_name), mesh=mesh_cfg)
    assert config.validate(cfg, n_devices) is cfg
    if name.startswith("cpu"):
        assert config.validate(dataclasses.replace(config.preset("tiny"), mesh=mesh_cfg), n_devices)


def test_presets_name_existing_mesh_configs():
    for preset_name in config.PRESETS:
        assert (MESH_DIR / f"{config.preset(preset_name).mesh.name}.yaml").exists()


def test_resolved_sizes_of_the_accelerator_meshes():
    assert config.resolve_axis_sizes(_load("gpu-8"), 8) == dict(data=1, fsdp=4, seq=1, tensor=1, expert=2)
    assert config.resolve_axis_sizes(_load("tpu-v5e-16"), 16) == dict(data=1, fsdp=8, seq=1, tensor=1, expert=2)
    v5p = _load("tpu-v5p-128")
    assert v5p.dcn.fsdp == 2 and v5p.dcn.data == 1  # FSDP over both slices (the YAML says why)
    assert config.resolve_axis_sizes(v5p, 128) == dict(data=1, fsdp=32, seq=1, tensor=1, expert=4)
    with pytest.raises(ConfigError, match=r"mesh\.axes"):
        config.resolve_axis_sizes(v5p, 64)  # one slice is not enough


def test_cpu8_yaml_rules():
    rules = dict(_load("cpu-8").rules)
    assert rules["act_batch"] == rules["cache_batch"] == ("data", "fsdp", "expert")
    for name in ("heads", "kv_heads", "mlp", "exp_mlp", "vocab"):
        assert rules[name] == ("tensor",)
    assert rules["exp"] == ("expert",)
    assert rules["embed"] == ("fsdp",)
    assert rules["head_dim"] == rules["act_embed"] == ()


def test_cpu8_mesh_shape_and_axis_types(cpu8):
    mesh, _ = cpu8
    assert mesh.axis_names == config.MESH_AXES
    assert dict(mesh.shape) == dict(data=2, fsdp=1, seq=1, tensor=2, expert=2)
    assert mesh.axis_types == (AxisType.Auto,) * 5
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices()[:8])


def test_cpu1_mesh_takes_all_devices_on_data():
    cfg = _load("cpu-1")
    assert dict(sharding.make_mesh(cfg, jax.devices()[:1]).shape)["data"] == 1
    assert dict(sharding.make_mesh(cfg, jax.devices()[:8]).shape)["data"] == 8


def test_make_mesh_device_count_mismatch_names_mesh_axes():
    with pytest.raises(ConfigError, match=r"^mesh\.axes: .*8 .*4 devices"):
        sharding.make_mesh(_load("cpu-8"), jax.devices()[:4])


def test_dcn_mesh_falls_back_to_contiguous_fake_slices_on_cpu():
    cfg = config.MeshConfig(
        name="fake-2-slices", axes=config.AxisSizes(data=1, tensor=2, expert=2), dcn=config.AxisSizes(data=2)
    )
    devices = jax.devices()[:8]
    mesh = sharding.make_mesh(cfg, devices)
    assert dict(mesh.shape) == dict(data=2, fsdp=1, seq=1, tensor=2, expert=2)
    # "slice" i = the i-th block of 4 devices, laid out along the dcn (data) axis
    assert {d.id for d in mesh.devices[0].flat} == {d.id for d in devices[:4]}
    assert {d.id for d in mesh.devices[1].flat} == {d.id for d in devices[4:]}
    # dcn on an inner axis: the dcn index is the outer part of that axis
    cfg2 = dataclasses.replace(cfg, axes=config.AxisSizes(data=2, tensor=2), dcn=config.AxisSizes(tensor=2))
    grid = sharding.make_mesh(cfg2, devices).devices.reshape(2, 4)  # (data, tensor) with tensor = dcn 2 × ici 2
    assert grid[:, :2].flatten().tolist() == devices[:4]
    assert grid[:, 2:].flatten().tolist() == devices[4:]


def test_axis_rules_format_and_size_one_pruning(cpu8):
    mesh, cfg = cpu8
    plain = dict(sharding.axis_rules(cfg))
    assert plain["act_batch"] == ("data", "fsdp", "expert")
    assert plain["embed"] == "fsdp"
    assert plain["heads"] == "tensor"
    assert plain["head_dim"] is None
    pruned = sharding.axis_rules(cfg, mesh)
    assert [n for n, _ in pruned] == DEFAULT_RULE_NAMES
    pruned = dict(pruned)
    assert pruned["act_batch"] == ("data", "expert")  # fsdp is 1 on cpu-8
    assert pruned["embed"] is None
    assert pruned["act_len"] is None
    assert pruned["exp"] == "expert"


def test_axis_rules_reject_unknown_mesh_axis():
    cfg = config.MeshConfig(rules=(("embed", ("model",)),))
    with pytest.raises(ConfigError, match=r"mesh\.rules\.embed"):
        sharding.axis_rules(cfg)


def test_logical_sharding(cpu8):
    mesh, cfg = cpu8
    s = sharding.logical_sharding(("act_batch", "act_len", "act_heads", None), mesh, cfg)
    assert isinstance(s, NamedSharding)
    assert s.mesh == mesh
    assert s.spec == P(("data", "expert"), None, "tensor", None)
    # a name without a rule is replicated
    assert sharding.logical_sharding(("nonexistent",), mesh, cfg).spec == P(None)


class Tiny(nn.Module):
    """Two named weights, one unnamed bias, and an activation constraint traced during init."""

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(1.0)
        w = self.param("w", nn.with_logical_partitioning(init, ("embed", "mlp")), (16, 8))
        experts = self.param("experts", nn.with_logical_partitioning(init, ("exp", "embed", "exp_mlp")), (4, 16, 8))
        b = self.param("b", nn.initializers.normal(1.0), (8,))
        h = nn.with_logical_constraint(x @ w + b, ("act_batch", "act_mlp"))
        return h + jnp.einsum("bd,edf->bf", x, experts)


def test_init_sharded_specs_and_values(cpu8):
    mesh, cfg = cpu8
    model, x, key = Tiny(), jnp.ones((8, 16)), jax.random.key(0)
    params, shardings = sharding.init_sharded(model.init, mesh, cfg, key, x)
    p = params["params"]
    assert not any(
        isinstance(v, nn.meta.AxisMetadata) for v in jax.tree.leaves(params, is_leaf=nn.meta.is_axis_metadata)
    )
    assert p["w"].sharding.spec == P(None, "tensor")
    assert p["experts"].sharding.spec == P("expert", None, "tensor")
    assert p["b"].sharding.spec == P()
    assert p["experts"].sharding.mesh == mesh
    assert p["experts"].addressable_shards[0].data.shape == (2, 16, 4)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)
    assert shardings["params"]["w"] == p["w"].sharding
    reference = nn.meta.unbox(model.init(key, x))  # unsharded, no mesh
    for name in ("w", "experts", "b"):
        np.testing.assert_array_equal(np.asarray(p[name]), np.asarray(reference["params"][name]))
    assert float(jnp.abs(p["w"]).sum()) > 0  # not all zeros: the comparison means something


def test_shard_batch(cpu8):
    mesh, cfg = cpu8
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 384, (8, 5, 3)), "mask": rng.random((8, 5)) > 0.5, "step": np.int32(3)}
    out = sharding.shard_batch(batch, mesh, cfg)
    assert out["tokens"].sharding.spec == P(("data", "expert"), None, None)
    assert out["mask"].sharding.spec == P(("data", "expert"), None)
    assert out["step"].sharding.spec == P()
    # 4 batch shards of 2 rows each (data 2 × fsdp 1 × expert 2), each held by the 2 tensor devices
    shards = out["tokens"].addressable_shards
    assert len(shards) == 8
    assert {s.data.shape for s in shards} == {(2, 5, 3)}
    assert len({s.index[0].start for s in shards}) == 4
    np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
    np.testing.assert_array_equal(np.asarray(out["mask"]), batch["mask"])
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'tokens'.*6 rows.*4 devices"):
        sharding.shard_batch({"tokens": np.zeros((6, 2))}, mesh, cfg)


def test_logical_constraint_inside_mesh_context(cpu8):
    mesh, cfg = cpu8

    @jax.jit
    def f(x):
        return nn.with_logical_constraint(x * 2, ("act_batch", "act_mlp"))

    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    with sharding.mesh_context(mesh, cfg):
        y = f(x)
    assert y.sharding.spec == P(("data", "expert"), "tensor")
    assert y.sharding.mesh.shape == mesh.shape
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)

    # outside the context the constraint is a no-op: one device holds the whole array
    @jax.jit
    def g(x):
        return nn.with_logical_constraint(x * 2, ("act_batch", "act_mlp"))

    assert len(g(x).sharding.device_set) == 1


def test_a_mesh_yaml_states_only_the_rules_it_changes_merged_by_name(tmp_path):
    base = "name: m\ndevice_kind: cpu\naxes: {data: -1}\n"
    defaults = config.MeshConfig().rules
    (tmp_path / "plain.yaml").write_text(base)
    (tmp_path / "own.yaml").write_text(base + "rules: {embed: [], new_axis: [tensor], act_batch: [data]}\n")
    assert config.load_mesh(tmp_path / "plain.yaml").rules == defaults
    own = config.load_mesh(tmp_path / "own.yaml").rules
    # a changed rule keeps its place in the priority order; a new one goes last; the rest stand
    changed = {"embed": (), "act_batch": ("data",)}
    assert own == (*((name, changed.get(name, axes)) for name, axes in defaults), ("new_axis", ("tensor",)))
    # the same merge from a config override, and a list (a whole replacement) is refused
    cfg = config.override(config.preset("tiny"), ["mesh.rules.embed=[tensor]"])
    assert dict(cfg.mesh.rules) == dict(defaults) | {"embed": ("tensor",)}
    (tmp_path / "listed.yaml").write_text(base + "rules: [[embed, []]]\n")
    with pytest.raises(ConfigError, match=r"mesh\.rules"):
        config.load_mesh(tmp_path / "listed.yaml")
