"""`interaction-jax plan --compile`: the deviceless TPU compile of the train step and the serving tick.

The compiles (libtpu) run on the v5e-8 mesh (fsdp 2 × expert 4: experts, weights and rows sharded, the
MoE's expert-parallel collectives in the program): `small`'s serving tick and `small`'s train step (its
layers scanned, the preset's default; the real trainer step with the AdamW update, the state's
shardings and its donation), and `tiny` with a batch that cannot fit a v5e chip. `tiny`'s unrolled
train step is compiled for the same mesh by tests/test_sweep_compile.py.

`small`'s train step compiles at 8 windows of 10 chunks (SMALL_TRAIN), not the preset's 16 of 50: the
same program at fewer rows and tokens, one row per chip (8 over fsdp × expert). Measured alone on the
2-core machine (jit → trace / lower / compile): at the preset's batch, trace 1.4 s, lower 0.5 s,
XLA:TPU's compile 55 s (107 s of CPU); at SMALL_TRAIN, 23 s (43 s of CPU; 46-48 s beside another
process). XLA's time is the TPU backend's code generation (39 s of 48 in its log; its HLO passes 7 s),
which grows with the fused ops' number and sizes (generated code 78 MiB at the preset's batch, 38 MiB
here). The optimized programs: 21.2k HLO instructions at the preset's batch, the scanned layers' forward
and backward bodies (each a `while` of 16 trips) 4.2k and 4.4k of them, the rest (embedding, flow and
output heads, loss, the update over every parameter leaf) 12.5k; 17.0k at SMALL_TRAIN (2.4k, 2.9k,
11.6k). The bodies shrink because attention runs in causal query blocks of `kernels.window_block` (128):
192 tokens are two, a full and a partial one (960 are eight; 5 chunks, 96 tokens, would be one block,
the unblocked path). The same state arguments (1.88 GiB per chip, donated), the same collectives to
within a few (all-gathers 1,356 per step against 1,354, reduce-scatters 48); the temporaries are 2.0
GiB, 10.3 GiB at the preset's batch (which fits a v5e chip at 12.3 GiB in all: not checked here).
This module took 95 s (its train fixture 53 s), against 69 s (26 s) with `tiny`'s train step in its
place, both beside another process on one core; 50 s with `tiny`'s alone. The HLO reader and the
roofline arithmetic are checked on hand-written inputs. Without libtpu the compiles skip, unless
PALLAS_KERNELS_REQUIRE_LIBTPU=1 (as CI sets it), where they fail.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from interaction_jax import aot, sharding
from interaction_jax import config as config_lib
from interaction_jax import plan as plan_lib
from interaction_jax.model import cache as kv_cache
from interaction_jax.testing import random_batch

pytestmark = pytest.mark.compile


def _need_libtpu():
    if aot.libtpu_available():
        return
    if os.environ.get("PALLAS_KERNELS_REQUIRE_LIBTPU") == "1":
        pytest.fail(f"libtpu is not installed but PALLAS_KERNELS_REQUIRE_LIBTPU=1: {aot.INSTALL_HINT}")
    pytest.skip(f"libtpu is not installed ({aot.INSTALL_HINT}): no deviceless TPU compile")


def _v5e8(preset: str, *overrides: str) -> config_lib.Config:
    """`preset` on 8 v5e chips, fsdp 2 × expert 4."""
    cfg = dataclasses.replace(config_lib.preset(preset), mesh=config_lib.load_mesh("mesh_configs/tpu-v5e-8.yaml"))
    return config_lib.validate(config_lib.override(cfg, list(overrides)))


# `small`'s train step at 8 windows of 10 chunks (see the module's docstring)
SMALL_TRAIN = ("small", "train.batch_size=8", "train.window_chunks=10")


@pytest.fixture(scope="module")
def train_report():
    _need_libtpu()
    return aot.compile_plan(_v5e8(*SMALL_TRAIN), programs=("train",))


@pytest.fixture(scope="module")
def serve_report():
    _need_libtpu()
    return aot.compile_plan(_v5e8("small"), programs=("serve",))


# -- the compiles on 8 v5e chips, expert-sharded


@pytest.mark.slow
def test_the_train_step_holds_the_sharded_state_it_donates(train_report):
    cfg = _v5e8(*SMALL_TRAIN)
    shapes = plan_lib.make_plan(cfg, 8, "train")
    assert (train_report.num_devices, train_report.chip.name, train_report.topology) == (8, "v5e", "v5e:2x4")
    (train,) = train_report.programs
    # the train state is an argument: parameters and both AdamW moments, each as this device's shard
    state_bytes = shapes.param_bytes_per_device + shapes.optimizer_bytes_per_device
    assert state_bytes <= train.argument_bytes < 1.5 * state_bytes + 2**20 * 8, (train, shapes)
    # the state is donated: the new state reuses the old one's buffers
    assert train.alias_bytes >= state_bytes, train
    assert 0 < train.hbm_bytes < train_report.chip.hbm_gib * aot.GIB
    assert train.temp_bytes > 0 and train.code_bytes > 0 and train.compile_seconds > 0
    assert train.flops > 0 and train.bytes_accessed > 0
    tokens = cfg.train.batch_size * random_batch(cfg.stream, cfg.train.window_chunks, batch=1)["kind"].shape[1]
    assert train.tokens == tokens
    assert train.model_flops == aot.model_flops(cfg, shapes.active_params, tokens, train=True) / 8
    # the scanned layers: one loop forward, one backward (its transpose), each a trip per layer
    assert cfg.model.scan_layers and train.loops.count(cfg.model.n_layers) >= 2, train.loops
    # the state is `small`'s whatever the batch: its parameters as the preset plans them
    assert shapes.param_bytes_per_device == plan_lib.make_plan(_v5e8("small"), 8).param_bytes_per_device


def test_the_serving_tick_holds_the_parameters_and_its_cache_rows(serve_report):
    cfg = _v5e8("small")
    shapes = plan_lib.make_plan(cfg, 8)
    (serve,) = serve_report.programs
    # the parameters' shards and this device's rows of the cache (32 sessions over fsdp × expert = 8)
    cache_bytes = kv_cache.cache_bytes(cfg.model, cfg.serve.max_sessions, cfg.serve.max_len) / 8
    assert serve.argument_bytes >= shapes.param_bytes_per_device + cache_bytes, (serve, shapes)
    assert serve.argument_bytes < 1.1 * (shapes.param_bytes_per_device + cache_bytes), (serve, shapes)
    assert serve.alias_bytes >= cache_bytes, serve  # the cache is donated and comes back in place
    assert 0 < serve.hbm_bytes < serve_report.chip.hbm_gib * aot.GIB
    assert serve.temp_bytes > 0 and serve.flops > 0 and serve.bytes_accessed > 0
    # loops: the scanned layers, and the tick's output slots
    s = cfg.stream
    assert cfg.model.scan_layers and cfg.model.n_layers in serve.loops, serve.loops
    assert {s.text_out_slots, s.audio_slots} <= set(serve.loops), serve.loops


@pytest.mark.slow
def test_expert_sharding_shows_in_the_collectives(train_report, serve_report):
    (train,), (serve,) = train_report.programs, serve_report.programs
    # weights over fsdp are gathered for the forward pass, tokens over the expert axis for the MoE
    for p in (train, serve):
        assert p.collectives["all-gather"].count > 0 and p.collectives["all-gather"].bytes > 0, p
    # gradients are summed over the batch axes
    assert train.collectives["all-reduce"].bytes + train.collectives["reduce-scatter"].bytes > 0
    # the scanned layers' collectives run once per layer (and output slot), not once per program: the
    # train step gathers each layer's weights forward and again backward
    n_layers = _v5e8("small").model.n_layers
    assert serve.collectives["all-gather"].count >= n_layers * 9, serve.collectives
    assert train.collectives["all-gather"].count >= n_layers * 2, train.collectives


@pytest.mark.slow
def test_the_table_says_it_is_an_estimate(train_report, serve_report):
    table = train_report.table() + serve_report.table()
    for text in ("ESTIMATES, not measurements", "train step", "serving tick", "HBM arguments", "HBM temporaries"):
        assert text in table, text
    for text in ("all-to-all", "est. MFU", "compile time", "v5e:2x4", "while loops (trips)"):
        assert text in table, text


# -- a config that cannot fit


@pytest.mark.slow  # a CLI subprocess's deviceless compile
def test_a_config_that_does_not_fit_fails_naming_its_biggest_buffers(tmp_path):
    _need_libtpu()
    mesh = tmp_path / "v5e-4.yaml"  # 4 v5e chips, data parallel
    mesh.write_text("name: v5e-4\ndevice_kind: tpu\ntopology: v5e:2x2\naxes: {data: 4}\n")
    args = ["--preset", "tiny", "--mesh", str(mesh), "--set", "train.batch_size=4096", "--programs", "train"]
    result = subprocess.run(
        [sys.executable, "-m", "interaction_jax.cli", "plan", *args, "--compile"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result
    message = result.stderr
    assert "train step does not fit in the 16 GiB of HBM of a TPU v5e chip" in message, message
    # the whole batch's activations dominate: values of 4096 rows, named by the model's module path
    biggest = message.split("biggest buffers:\n")[1].split("\n")[0]
    assert "[4096," in biggest and "InteractionModel" in biggest and "intermediate" in biggest, message
    assert "≥ 0.78 GiB per device" in biggest, message  # 3.12 GiB of the whole batch over 4 chips at least
    # and the largest arguments, as one device's shard (4096 rows over 4 chips)
    assert "uint8[1024,8,40,40,3]  batch['patches']  — argument (per device)" in message, message
    for knob in ("model.remat", "train.grad_accum", "mesh.axes"):
        assert knob in message, knob
    assert "no program fits" in result.stdout


def test_a_compiled_program_over_the_chips_hbm_is_refused_with_its_regions():
    gib, v5e = aot.GIB, aot.CHIPS["v5e"]

    def program(temp_gib: float) -> aot.ProgramReport:  # 10 GiB of arguments, 4 of them donated to outputs
        return aot.ProgramReport(
            "x", 2.0, 10 * gib, 4 * gib, 4 * gib, int(temp_gib * gib), gib // 2, 0, 0, {}, (), 1, 0
        )

    assert program(5.5).hbm_bytes == 16 * gib and aot.over_hbm(program(5.5), v5e) is None
    why = aot.over_hbm(program(7), v5e)
    assert why.startswith("XLA compiled it, but it holds 17.50 GiB per chip: arguments 10.00 + temporaries 7.00"), why
    assert "outputs not aliased 0.00 + code 0.50 GiB" in why, why


def test_intermediates_are_global_except_inside_a_shard_map():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:8])
    double = jax.shard_map(lambda a: a * 2, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    jaxpr = jax.make_jaxpr(lambda a: double(a) + 1)(jnp.zeros((64, 128)))
    kinds = {(b.shape, b.kind) for b in aot.intermediate_buffers(jaxpr, limit=10)}
    assert ((8, 128), "intermediate (per device, in shard_map)") in kinds, kinds
    assert ((64, 128), "intermediate (global shape)") in kinds, kinds
    assert ((64, 128), "intermediate (per device, in shard_map)") not in kinds, kinds


# -- no libtpu


def test_without_libtpu_compile_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    with pytest.raises(aot.LibtpuMissing, match=r'pip install -e "\.\[tpu-compile\]"'):
        aot.compile_plan(config_lib.preset("tiny"))


def test_without_libtpu_the_command_fails_with_the_install_line():
    script = (
        "import sys\nfrom interaction_jax import aot, cli\naot.libtpu_available = lambda: False\n"
        "sys.argv = ['interaction-jax', 'plan', '--preset', 'tiny', '--num-devices', '1', '--compile']\ncli.run()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result
    assert 'pip install -e ".[tpu-compile]"' in result.stderr, result.stderr
    assert "total parameters" in result.stdout  # the shapes-only plan still prints first


# -- topologies


def test_a_multislice_mesh_gets_one_topology_per_slice_with_dcn_across_them():
    _need_libtpu()
    mesh_cfg = config_lib.load_mesh("mesh_configs/tpu-v5p-128.yaml")
    devices = aot.topology_devices(mesh_cfg)
    assert len(devices) == 128 and {d.slice_index for d in devices} == {0, 1}
    mesh = sharding.make_mesh(mesh_cfg, devices)
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    # the dcn factor of fsdp (2 of its 32) splits the slices; every other axis stays inside one
    fsdp = mesh.axis_names.index("fsdp")
    halves = np.split(slices, 2, axis=fsdp)
    assert (halves[0] == 0).all() and (halves[1] == 1).all()


def test_every_tpu_mesh_config_names_a_chip_with_published_peaks():
    for name in ("tpu-v5e-8", "tpu-v5e-16", "tpu-v5p-128", "tpu-v5p-1024", "tpu-v6e-256"):
        mesh_cfg = config_lib.load_mesh(f"mesh_configs/{name}.yaml")
        chip = aot.chip_of(mesh_cfg.topology)
        assert name.split("-")[1] == chip.name, name
        chips = np.prod([int(x) for x in mesh_cfg.topology.split(":")[1].split("x")]) * config_lib.mesh_slices(mesh_cfg)
        assert config_lib.mesh_device_count(mesh_cfg) == (chips, True), name


def test_every_tpu_mesh_config_lays_its_mesh_over_its_topology():
    _need_libtpu()
    for name in ("tpu-v5e-8", "tpu-v5e-16", "tpu-v5p-128", "tpu-v5p-1024", "tpu-v6e-256"):
        mesh_cfg = config_lib.load_mesh(f"mesh_configs/{name}.yaml")
        devices = aot.topology_devices(mesh_cfg)
        mesh = sharding.make_mesh(mesh_cfg, devices)
        assert mesh.size == len(devices) == config_lib.mesh_device_count(mesh_cfg)[0], name
        assert aot.chip_of(mesh_cfg.topology).name in name, name


def test_a_mesh_without_a_topology_is_refused():
    _need_libtpu()
    with pytest.raises(config_lib.ConfigError, match=r"mesh\.topology"):
        aot.topology_devices(config_lib.load_mesh("mesh_configs/cpu-8.yaml"))


def test_the_train_batch_has_the_shapes_training_feeds():
    cfg = config_lib.preset("tiny")
    batch = aot.train_batch(cfg)
    real = random_batch(cfg.stream, cfg.train.window_chunks, batch=cfg.train.batch_size)
    assert batch.pop("task").shape == (cfg.train.batch_size,)
    assert batch.pop("user_speaking").shape == (cfg.train.batch_size, cfg.train.window_chunks)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}


# -- the HLO reader


HLO = """\
HloModule m, entry_computation_layout={(f32[64,256]{1,0}, bf16[8,1024]{1,0})->f32[128,256]{1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %r = f32[] add(%a, %b)
}

%fused_gather (p0: f32[32,256]) -> f32[128,256] {
  %p0 = f32[32,256]{1,0} parameter(0)
  ROOT %all-gather.9 = f32[128,256]{1,0:T(8,128)} all-gather(%p0), replica_groups={{0,1,2,3}}, dimensions={0}
}

%body (p: (s32[], f32[128,256])) -> (s32[], f32[128,256]) {
  %p = (s32[], f32[128,256]{1,0}) parameter(0)
  %x = f32[128,256]{1,0} get-tuple-element(%p), index=1
  %all-reduce.3 = f32[128,256]{1,0:T(8,128)S(1)} all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%add
  %s = f32[32,256]{1,0} slice(%all-reduce.3), slice={[0:32], [0:256]}
  %g = f32[128,256]{1,0} fusion(%s), kind=kCustom, calls=%fused_gather
  ROOT %t = (s32[], f32[128,256]{1,0}) tuple(%i, %g)
}

%cond (p: (s32[], f32[128,256])) -> pred[] {
  %p = (s32[], f32[128,256]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(6)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body2 (q: (s32[], bf16[8,1024])) -> (s32[], bf16[8,1024]) {
  %q = (s32[], bf16[8,1024]{1,0}) parameter(0)
  %y = bf16[8,1024]{1,0} get-tuple-element(%q), index=1
  %collective-permute.1 = bf16[8,1024]{1,0} collective-permute(%y), source_target_pairs={{0,1},{1,0}}
  ROOT %t2 = (s32[], bf16[8,1024]{1,0}) tuple(%j, %collective-permute.1)
}

%cond2 (q: (s32[], bf16[8,1024])) -> pred[] {
  %q = (s32[], bf16[8,1024]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[64,256], y: bf16[8,1024]) -> f32[128,256] {
  %x = f32[64,256]{1,0} parameter(0)
  %y = bf16[8,1024]{1,0} parameter(1)
  %all-gather-start = (f32[64,256], f32[128,256]) all-gather-start(%x), replica_groups=[2,2]<=[4], dimensions={0}
  %all-gather-done = f32[128,256]{1,0} all-gather-done(%all-gather-start)
  %reduce-scatter.2 = bf16[2,1024]{1,0} reduce-scatter(%y), replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %all-to-all.4 = bf16[8,1024]{1,0} all-to-all(%y), replica_groups={{0,1,2,3}}, dimensions={0}
  %collective-permute-start.5 = (bf16[8,1024], bf16[8,1024], u32[], u32[]) collective-permute-start(%y),\
 source_target_pairs={{0,1},{1,0}}
  %collective-permute-done.5 = bf16[8,1024]{1,0} collective-permute-done(%collective-permute-start.5)
  %w = (s32[], f32[128,256]{1,0}) while(%init), condition=%cond, body=%body
  %w2 = (s32[], bf16[8,1024]) while(%i2), condition=%cond2, body=%body2, backend_config={"known_trip_count":{"n":"3"}}
  %all-reduce.8 = (f32[16]{0}, bf16[32]{0}) all-reduce(%x, %y), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %out = f32[128,256]{1,0} get-tuple-element(%w), index=1
}
"""


def test_the_collectives_of_a_hand_written_module_count_exactly():
    got = aot.parse_collectives(HLO)
    kib128 = 128 * 256 * 4  # one f32[128,256]
    bf16_8k = 8 * 1024 * 2  # one bf16[8,1024]
    # all-reduce: 6 trips of the loop body (i < 6) + one tuple all-reduce of 16 f32 and 32 bf16
    assert got["all-reduce"] == aot.Collective("all-reduce", 7, 6 * kib128 + 16 * 4 + 32 * 2)
    # all-gather: the async pair once (its gathered result), and the fused one 6 times through the loop
    assert got["all-gather"] == aot.Collective("all-gather", 7, 7 * kib128)
    # reduce-scatter: the input it reduces, result × 4 in the group
    assert got["reduce-scatter"] == aot.Collective("reduce-scatter", 1, 4 * 2 * 1024 * 2)
    assert got["all-to-all"] == aot.Collective("all-to-all", 1, bf16_8k)
    # collective-permute: the async pair once, and one in a loop XLA knows runs 3 times
    assert got["collective-permute"] == aot.Collective("collective-permute", 4, 4 * bf16_8k)
    assert aot.loop_trips(HLO) == (6, 3)


def test_shape_bytes_reads_hlo_types():
    assert aot.shape_bytes("f32[8,128]{1,0:T(8,128)}") == 8 * 128 * 4
    assert aot.shape_bytes("(bf16[2,3]{1,0}, s8[5]{0}, pred[4]{0})") == 12 + 5 + 4
    assert aot.shape_bytes("f32[]") == 4
    assert aot.shape_bytes("u32[]{:S(2)}") == 4


# -- the roofline arithmetic


def test_step_time_is_the_slower_of_compute_and_hbm():
    v5e = aot.CHIPS["v5e"]
    # 1.97e12 FLOPs at 197 TFLOP/s is 10 ms; 4.095e9 bytes at 819 GB/s is 5 ms
    seconds, bound = aot.roofline_seconds(1.97e12, 4.095e9, v5e)
    assert (round(seconds, 9), bound) == (0.01, "compute")
    seconds, bound = aot.roofline_seconds(1.97e10, 8.19e9, v5e)
    assert (round(seconds, 9), bound) == (0.01, "HBM")
    assert aot.mfu(0.985e12, 0.01, v5e) == pytest.approx(0.5)


def test_model_flops_are_6n_plus_attention_for_training_and_2n_for_serving():
    cfg = config_lib.preset("tiny")
    m = cfg.model
    window = random_batch(cfg.stream, cfg.train.window_chunks, batch=1)["kind"].shape[1]
    per_token = 6 * 1000 + 12 * m.n_layers * m.n_heads * m.head_dim * window
    assert aot.model_flops(cfg, 1000, 10, train=True) == 10 * per_token
    assert aot.model_flops(cfg, 1000, 10, train=False) == 2 * 1000 * 10


@pytest.mark.slow  # a CLI subprocess's deviceless compile
def test_deviceless_programs_stay_out_of_the_persistent_cache(tmp_path):
    """A compile-only TPU program written to JAX's persistent cache cannot be read back without a TPU client
    (a warning on every later hit); the CPU programs around it are still cached (the control: the cache is on)."""
    _need_libtpu()
    script = (
        "import dataclasses, jax\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)\n"
        "from interaction_jax import aot, config as config_lib\n"
        "mesh = config_lib.load_mesh('mesh_configs/tpu-v5e-8.yaml')\n"
        "cfg = dataclasses.replace(config_lib.preset('tiny'), mesh=mesh)\n"
        # a small serving tick: what is checked is where the compiled program goes, not the program
        "small = ['serve.max_sessions=8', 'serve.max_len=256', 'model.n_layers=1']\n"
        "aot.compile_plan(config_lib.override(cfg, small), programs=('serve',))\n"
        "jax.numpy.arange(3).sum().block_until_ready()\n"
    )
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    entries = [p.name for p in tmp_path.iterdir()]
    assert not [e for e in entries if e.startswith("jit__tick")], entries
    assert [e for e in entries if e.startswith("jit__reduce_sum")], entries
