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
    # fsdp 32 (16 in a slice × 2 slices) × expert 4 split the experts 128 ways: per-device bytes follow.
    assert plan.param_bytes_per_device < 0.015 * plan.total_params * 4
    assert plan.optimizer_bytes_per_device == 2 * plan.param_bytes_per_device
    assert "(AdamW f32)" in plan.table()
    # a moving average of the parameters is one copy more of them
    averaged = plan_lib.make_plan(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.99)), 128)
    assert averaged.optimizer_bytes_per_device == 3 * plan.param_bytes_per_device
    assert "(AdamW f32 + params' average)" in averaged.table()


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
    assert "128 devices, fsdp 32 × expert 4" in out.stdout
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


# Each section checks its own fields (`config/tree.py`); the checks below had no test of their own.
SECTION_CHECKS = [
    # (overrides, key named in the error, words in the message)
    (["stream.n_fft=512", "stream.win_ms=50"], "stream.n_fft", "the 50 ms window does not fit n_fft 512"),
    (["stream.dmel_min=2.0"], "stream.dmel_max", "must exceed stream.dmel_min"),
    (["stream.fmax=9000"], "stream.fmax", "need fmin < fmax <= sample_rate/2, got 80.0, 9000.0"),
    (["stream.fmin=7600"], "stream.fmax", "need fmin < fmax"),
    (["data.camera_off=1.5"], "data.camera_off", "1.5 is not a share of episodes"),
    (["train.grad_accum=3"], "train.grad_accum", "batch_size 8 does not split into 3 microbatches"),
    (["kernels.alignment=bitwise", "kernels.norm=xla"], "kernels.norm", "alignment bitwise needs"),
    (["serve.agent=lm"], "serve.agent_workdir", "the lm agent needs a checkpoint"),
    (["serve.tools_clock='24:00'"], "serve.tools_clock", "'24:00' is not a time of day"),
    (["serve.port=65536"], "serve.port", "65536 is not a TCP port"),
    (["mesh.rules.embed=[model]"], "mesh.rules.embed", "unknown mesh axis 'model'"),
]


@pytest.mark.parametrize(("overrides", "key", "words"), SECTION_CHECKS, ids=[c[1] for c in SECTION_CHECKS])
def test_a_section_check_names_its_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        config_lib.validate(config_lib.override(TINY, overrides))
    assert err.value.key == key and str(err.value).startswith(f"{key}: ") and words in str(err.value)
    section = key.split(".")[0]
    # the section's own check finds it alone, without the rest of the tree
    with pytest.raises(ConfigError, match=f"^{key}: "):
        getattr(config_lib.override(TINY, overrides), section).check()


def test_checks_no_literal_can_refuse_are_still_made():
    # dataclasses.replace skips the type check of loading, so the section checks still guard these
    with pytest.raises(ConfigError, match=r"^model\.expert_parallel: unknown 'ring'"):
        config_lib.validate(dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, expert_parallel="ring")))
    with pytest.raises(ConfigError, match=r"^mesh\.device_kind: unknown kind 'npu'"):
        config_lib.validate(dataclasses.replace(TINY, mesh=dataclasses.replace(TINY.mesh, device_kind="npu")))


# The numbers a field declares may be 0 (off / none) or of any sign (`setting(..., lower=...)`); every
# other number in model, stream, train, serve, data and kernels must be > 0. Pinned here so a change shows.
MAY_BE_ZERO = {
    "model.shared_expert_mlp",
    "model.dense_every",
    "model.vap_horizon",
    "stream.fmin",
    "train.seed",
    "train.warmup_steps",
    "train.min_lr_ratio",
    "train.weight_decay",
    "train.grad_clip",
    "train.pad_weight",
    "train.flow_weight",
    "train.load_balance_weight",
    "train.router_z_weight",
    "train.vap_weight",
    "train.ema_decay",
    "train.eval_every",
    "train.behaviour_episodes",
    "serve.temperature",
    "serve.agent_latency_s",
    "serve.port",
    "data.seed",
    "data.num_workers",
    "data.camera_off",
    "data.shards",
    "kernels.window_block",
    "kernels.moe_gemv_max_tokens",
}
ANY_SIGN = {"stream.dmel_min", "stream.mel_mean"}


def _numbers(section: str) -> list[str]:
    sub = getattr(TINY, section)
    return [
        f"{section}.{f.name}"
        for f in dataclasses.fields(sub)
        if isinstance(getattr(sub, f.name), (int, float)) and not isinstance(getattr(sub, f.name), bool)
    ]


NUMBERS = [key for section in ("model", "stream", "train", "serve", "data", "kernels") for key in _numbers(section)]


@pytest.mark.parametrize("key", NUMBERS)
def test_each_number_is_held_to_the_bound_its_field_declares(key):
    section, name = key.split(".")
    sub = getattr(TINY, section)
    for value, refused in ((0, key not in MAY_BE_ZERO | ANY_SIGN), (-1, key not in ANY_SIGN)):
        bad = dataclasses.replace(sub, **{name: type(getattr(sub, name))(value)})
        if refused:
            with pytest.raises(ConfigError, match=f"^{key}: must be positive, got "):
                config_lib.check_bounds(bad, section)
        else:
            config_lib.check_bounds(bad, section)


def test_the_bounds_are_checked_through_validate_in_every_section():
    for key in (
        "model.rope_theta",
        "stream.mel_std",
        "train.decision_weight",
        "serve.flow_steps",
        "data.episode_chunks",
        "kernels.block_kv",  # (0 once crashed validate with a ZeroDivisionError)
    ):
        with pytest.raises(ConfigError, match=f"^{key}: must be positive, got -1"):
            config_lib.validate(config_lib.override(TINY, [f"{key}=-1"]))
    assert config_lib.validate(config_lib.override(TINY, ["stream.mel_mean=-9", "train.seed=0", "serve.port=0"]))


def test_training_checks_only_the_serve_keys_training_reads():
    training_keys = config_lib.TRAINING_SERVE_KEYS
    assert training_keys == {
        "temperature",
        "top_p",
        "calibrate_pad",
        "speak_threshold",
        "flow_temperature",
        "flow_steps",
    }
    server_only = config_lib.override(TINY, ["serve.max_len=0", "serve.tools_clock=noon", "serve.port=70000"])
    assert config_lib.validate(server_only, purpose="train") is server_only
    with pytest.raises(ConfigError, match=r"^serve\.max_len: must be positive"):
        config_lib.validate(server_only)
    with pytest.raises(ConfigError, match=r"^serve\.flow_steps: must be positive"):
        config_lib.validate(config_lib.override(TINY, ["serve.flow_steps=0"]), purpose="train")
    with pytest.raises(ConfigError, match=r"^serve\.speak_threshold: .* strictly between 0 and 1"):
        config_lib.validate(config_lib.override(TINY, ["serve.speak_threshold=1.5"]), purpose="train")


# The checks of one section against another (`config/checks.py: check_across_sections`).
ACROSS = [
    (["train.window_chunks=12"], "train.window_chunks", "not a multiple of stream.video_every=5"),
    (["data.shards=3"], "data.shards", "batch_size 8 does not split over 3 data shards"),
    (["model.moe_dispatch=gmm", "kernels.moe_block_k=96"], "kernels.moe_block_k", "96 does not divide model.d_model"),
    (["train.pad_weight=0"], "serve.calibrate_pad", "cannot be calibrated for train.pad_weight 0"),
]


@pytest.mark.parametrize(("overrides", "key", "words"), ACROSS, ids=[c[1] for c in ACROSS])
def test_a_check_across_sections_names_its_key(overrides, key, words):
    cfg = config_lib.override(TINY, overrides)
    for section in ("model", "stream", "train", "data", "kernels", "mesh"):
        getattr(cfg, section).check()  # no section alone sees it
    cfg.serve.check()
    with pytest.raises(ConfigError, match=f"^{key}: .*{words}"):
        config_lib.check_across_sections(cfg)
    with pytest.raises(ConfigError, match=f"^{key}: .*{words}"):
        config_lib.validate(cfg)


def test_window_chunks_need_not_follow_video_every_without_video():
    assert config_lib.validate(config_lib.override(TINY, ["train.window_chunks=12", "stream.video=false"]))


@pytest.mark.parametrize(
    ("overrides", "num_devices", "key", "words"),
    [
        (["mesh.axes.data=0"], 8, "mesh.axes.data", "size 0 is invalid"),
        (["mesh.axes.data=-2"], 8, "mesh.axes.data", "size -2 is invalid"),
        (["mesh.dcn.fsdp=0"], 8, "mesh.dcn.fsdp", "size 0 is invalid"),
        (["mesh.axes.tensor=3"], 8, "mesh.axes.data", "8 devices do not split into the fixed axes (3) × dcn (1)"),
        (["serve.max_sessions=3"], 2, "serve.max_sessions", "3 is not divisible by the 2 devices"),
    ],
)
def test_the_mesh_checks_against_the_device_count(overrides, num_devices, key, words):
    with pytest.raises(ConfigError) as err:
        config_lib.validate(config_lib.override(TINY, overrides), num_devices)
    assert err.value.key == key and words in str(err.value)
    cfg = config_lib.validate(config_lib.override(TINY, overrides))  # no count: nothing to check them against
    if key == "serve.max_sessions":
        config_lib.validate(cfg, num_devices, purpose="train")  # training never reads the sessions


def test_axes_size_is_the_product_of_the_named_axes():
    sizes = config_lib.resolve_axis_sizes(config_lib.MeshConfig(axes=config_lib.AxisSizes(data=-1, tensor=2)), 8)
    assert config_lib.axes_size(sizes, ("data", "tensor")) == 8
    assert config_lib.axes_size(sizes, ("tensor",)) == 2 and config_lib.axes_size(sizes, ()) == 1


def test_the_config_package_loads_neither_jax_nor_data():
    code = "import sys, interaction_jax.config as c; c.validate(c.preset('tiny'), 4); print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'jax'" not in loaded and "interaction_jax.data" not in loaded and "interaction_jax.sharding" not in loaded


def test_a_time_of_day_is_a_string_not_a_base_60_number(tmp_path):
    """PyYAML reads YAML 1.1's base-60 numbers: `9:30` would be 570 and refused as not a string (control)."""
    import yaml

    from interaction_jax.config import loading

    assert yaml.safe_load("9:30") == 570  # the hazard
    cfg = config_lib.validate(config_lib.override(config_lib.preset("tiny"), ["serve.tools_clock=9:30"]))
    assert cfg.serve.tools_clock == "9:30"
    path = tmp_path / "clock.yaml"
    path.write_text("preset: tiny\nserve:\n  tools_clock: 9:30\n")
    assert config_lib.load_yaml(path).serve.tools_clock == "9:30"
    path.write_text(config_lib.dump_yaml(cfg))  # written and read back the same
    assert config_lib.load_yaml(path).serve.tools_clock == "9:30"
    # every other scalar reads as PyYAML reads it
    for text in ("10", "0x1f", "017", "1_000", "3.5", "1.5e-3", ".5", "-.inf", "1e-3", "true", "yes", "~", "[1, 2]"):
        assert loading.load_yaml_text(text) == yaml.safe_load(text), text
