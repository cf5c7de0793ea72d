"""The config tree: presets, YAML, overrides, and validation errors that name the key and the fix."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from interaction_jax import config as config_lib
from interaction_jax import plan as plan_lib
from interaction_jax.config import ConfigError

TINY = config_lib.preset("tiny")
CPU8 = config_lib.load_mesh("mesh_configs/cpu-8.yaml")


@pytest.mark.parametrize("name", list(config_lib.PRESETS))
def test_presets_validate_and_round_trip_through_yaml(name, tmp_path):
    cfg = config_lib.validate(config_lib.preset(name))
    path = tmp_path / "cfg.yaml"
    path.write_text(config_lib.dump_yaml(cfg))
    assert config_lib.load_yaml(path, config_lib.Config()) == cfg


def test_overrides_are_typed_and_nested():
    cfg = config_lib.override(
        TINY,
        [
            "model.d_model=256",
            "stream.video=false",
            "train.learning_rate=1e-3",
            "mesh.axes.data=4",
            "model.moe_dispatch=gather",
        ],
    )
    assert cfg.model.d_model == 256 and cfg.stream.video is False and cfg.train.learning_rate == 1e-3
    assert cfg.mesh.axes.data == 4 and cfg.model.moe_dispatch == "gather"
    assert TINY.model.d_model == 128  # the original is untouched (frozen tree)
    assert config_lib.override(TINY, ["train.learning_rate=1"]).train.learning_rate == 1.0  # int → float
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.model.d_model = 3  # type: ignore[misc]


def test_yaml_file_with_preset_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: small\nmodel:\n  n_layers: 2\n")
    cfg = config_lib.load_yaml(path)
    assert cfg.model.n_layers == 2 and cfg.model.d_model == config_lib.preset("small").model.d_model


BAD = [
    # (overrides, num_devices, mesh, key named in the error, words in the message)
    (["model.d_modle=3"], None, None, "model.d_modle", "did you mean model.d_model"),
    (["model.n_heads=four"], None, None, "model.n_heads", "expected an integer"),
    (["stream.video=yes"], None, None, "stream.video", "expected true/false"),
    (["model.moe_dispatch=sparse"], None, None, "model.moe_dispatch", "not one of"),
    (["model.n_heads=3", "model.n_kv_heads=1"], 8, CPU8, "model.n_heads", "divisible"),
    (["model.n_experts=3", "model.top_k=2"], 8, CPU8, "model.n_experts", "divisible"),
    ([], 4, CPU8, "mesh.axes", "there are 4 devices"),
    (["stream.chunk_ms=190"], None, None, "stream.chunk_ms", "multiple of hop_ms × stack"),
    (["stream.frame_width=100"], None, None, "stream.frame_width", "multiple of the 40-pixel patch"),
    (["model.d_model=-8"], None, None, "model.d_model", "must be positive"),
    (["train.batch_size=0"], None, None, "train.batch_size", "must be positive"),
    (["model.top_k=5"], None, None, "model.top_k", "exceeds n_experts"),
    (["model.n_kv_heads=3"], None, None, "model.n_kv_heads", "do not group"),
    (["model.vocab_size=300"], None, None, "model.vocab_size", "multiple of 128"),
    (["train.window_chunks=7"], None, None, "train.window_chunks", "video_every"),
    (["train.batch_size=6"], 8, CPU8, "train.batch_size", "divisible"),
    (["mesh.axes.data=-1", "mesh.axes.tensor=-1"], 8, None, "mesh.axes.tensor", "only one axis may be -1"),
    (["model.head_dim=33"], None, None, "model.head_dim", "even"),
    (["kernels.alignment=exact"], None, None, "kernels.alignment", "not one of"),
    (["d_model=3"], None, None, "d_model", "unknown key"),
    (["model.d_model"], None, None, "model.d_model", "a.b=c"),
    (["serve.speak_threshold=1.0"], None, None, "serve.speak_threshold", "strictly between 0 and 1"),
    (["train.pad_weight=0"], None, None, "serve.calibrate_pad", "cannot be calibrated"),
    (["serve.max_handshakes=65"], None, None, "serve.max_handshakes", "cannot be in flight on 64"),
    (["serve.allowed_origins=[http://a.example/page]"], None, None, "serve.allowed_origins", "is not an origin"),
    (["serve.outbox_messages=0"], None, None, "serve.outbox_messages", "must be positive"),
]


@pytest.mark.parametrize(
    ("overrides", "num_devices", "mesh", "key", "words"), BAD, ids=[b[3] + ":" + b[4] for b in BAD]
)
def test_bad_config_names_key_and_fix(overrides, num_devices, mesh, key, words):
    base = dataclasses.replace(TINY, mesh=mesh) if mesh is not None else TINY
    with pytest.raises(ConfigError) as err:
        config_lib.validate(config_lib.override(base, overrides), num_devices)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")
    assert words in str(err.value)
    assert "fix:" in str(err.value)


def test_resolve_axis_sizes_fills_the_rest():
    mesh = config_lib.MeshConfig(axes=config_lib.AxisSizes(data=-1, tensor=2))
    assert config_lib.resolve_axis_sizes(mesh, 8) == {"data": 4, "fsdp": 1, "seq": 1, "tensor": 2, "expert": 1}


def test_mesh_device_count_is_the_callers_count_else_what_the_mesh_settles():
    fixed = config_lib.MeshConfig(axes=config_lib.AxisSizes(data=1, fsdp=4, tensor=2), dcn=config_lib.AxisSizes(data=2))
    assert config_lib.mesh_device_count(fixed) == (16, True)
    assert config_lib.mesh_device_count(fixed, 32) == (32, True)  # the caller's own count wins
    assert config_lib.mesh_slices(fixed) == 2
    open_axis = config_lib.MeshConfig(axes=config_lib.AxisSizes(data=-1, tensor=2))
    assert config_lib.mesh_device_count(open_axis) == (2, False)  # the fewest it allows; not settled
    assert config_lib.mesh_device_count(open_axis, 8) == (8, True)


def test_tml_small_shape_plan_lands_near_the_published_size():
    cfg = dataclasses.replace(
        config_lib.preset("tml-small-shape"), mesh=config_lib.load_mesh("mesh_configs/tpu-v5p-128.yaml")
    )
    plan = plan_lib.make_plan(cfg, 128)
    assert 265e9 <= plan.total_params <= 285e9
    assert 11e9 <= plan.active_params <= 13e9
    # fsdp 16 × expert 4 (× data replication) split the experts 64 ways: per-device bytes follow.
    assert plan.param_bytes_per_device < 0.03 * plan.total_params * 4
    assert plan.optimizer_bytes_per_device == 2 * plan.param_bytes_per_device


def test_tiny_plan_counts_match_the_real_parameters():
    import jax

    from interaction_jax.model import step as step_lib

    params = step_lib.init_params(TINY, jax.random.key(0))
    plan = plan_lib.make_plan(TINY, 1)
    assert plan.total_params == sum(x.size for x in jax.tree.leaves(params))
    assert plan.param_bytes_per_device == 4 * plan.total_params


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "interaction_jax.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_config_prints_resolved_yaml():
    out = run_cli("config", "--preset", "tiny", "--set", "model.d_model=256")
    assert out.returncode == 0, out.stderr
    assert "  d_model: 256\n" in out.stdout and "  n_layers: 4\n" in out.stdout


def test_cli_config_error_exits_2_with_the_key():
    out = run_cli("config", "--set", "model.n_experts=0")
    assert out.returncode == 2
    assert "model.n_experts: must be positive" in out.stderr


def test_cli_refuses_an_unknown_scenario_with_the_valid_names():
    # the config holds names only; the CLI checks them against data.scenarios' registry (check_mix)
    out = run_cli("config", "--set", "data.scenarios=[chitchat]", "--set", "data.weights=[1]")
    assert out.returncode == 2
    assert "data.scenarios: unknown scenario 'chitchat' — fix: use names from ['turn_taking'," in out.stderr


def test_cli_plan_prints_the_table():
    out = run_cli("plan", "--preset", "tml-small-shape", "--mesh", "mesh_configs/tpu-v5p-128.yaml")
    assert out.returncode == 0, out.stderr
    assert "128 devices, data 2 × fsdp 16 × expert 4" in out.stdout
    total = next(line for line in out.stdout.splitlines() if line.startswith("total parameters"))
    assert 265 <= float(total.split()[-2]) <= 285


def test_cli_without_a_command_prints_usage():
    out = run_cli()
    assert out.returncode != 0
    assert "commands: demo, train, eval, sweep, serve, talk, config, plan, data" in out.stderr


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["data.weights=[1, 2]"], "data.weights", "2 weights for 7 scenarios"),
        (["data.weights=[0, 0, 0, 0, 0, 0, 0]"], "data.weights", "positive sum"),
    ],
)
def test_data_config_errors_name_the_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_lib.validate(config_lib.override(config_lib.preset("tiny"), overrides))
    assert err.value.key == key
