"""Every kernel, compiled for real targets on a CPU-only machine (marker `compile`).

The interpreted tests check the numerics; these check what only the real compilers check: the full
deviceless TPU compile (Mosaic's tiling and layout passes, then XLA) for v5e and v5p with libtpu,
and the Pallas → Triton lowering for CUDA. The shapes are in `pallas_kernels.compile_cases`. Without
libtpu (`pip install -e ".[tpu-compile]"`) the TPU half skips, unless PALLAS_KERNELS_REQUIRE_LIBTPU=1
(as CI sets it), where a missing libtpu fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

from pallas_kernels import compile_check, tpu_tiling
from pallas_kernels.compile_cases import CASES

pytestmark = pytest.mark.compile

CASE_PARAMS = [pytest.param(case, id=case.name.replace(" ", "-")) for case in CASES]


def _need_libtpu():
    if compile_check.libtpu_available():
        return
    if os.environ.get("PALLAS_KERNELS_REQUIRE_LIBTPU") == "1":
        pytest.fail("libtpu is not installed but PALLAS_KERNELS_REQUIRE_LIBTPU=1: pip install -e '.[tpu-compile]'")
    pytest.skip("libtpu is not installed (pip install -e '.[tpu-compile]'): no deviceless TPU compile")


def _nbytes(specs) -> int:
    return sum(s.size * jnp.dtype(s.dtype).itemsize for s in specs)


@pytest.mark.parametrize("target", ["v5e", "v5p"])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_kernel_compiles_for_tpu(case, target):
    _need_libtpu()
    compiled = compile_check.compile_tpu(case.tpu, case.specs, target)
    assert "tpu_custom_call" in compiled.as_text(), f"{case.name}: no Mosaic kernel in the {target} executable"
    facts = compile_check.tpu_facts(compiled)
    # every input is an argument of the executable (small ones padded to the TPU's tiles)
    assert _nbytes(case.specs) <= facts["argument bytes"] < _nbytes(case.specs) + 2**20, facts
    assert facts["bytes accessed"] > 0, facts


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_kernel_lowers_to_triton_for_cuda(case):
    module = compile_check.lower_cuda(case.gpu, case.specs)
    calls = set(re.findall(r"stablehlo\.custom_call @([\w$.]+)", module))
    assert compile_check.TRITON_CALL in calls, f"{case.name}: no Triton kernel in {sorted(calls)}"
    assert not any("mosaic" in c for c in calls), f"{case.name}: routed to Mosaic GPU: {sorted(calls)}"


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_tpu_pipelines_fit_the_scoped_vmem(case):
    """Every TPU kernel's pipeline (blocks double-buffered, plus scratch) fits the 16 MiB a Mosaic kernel
    may take by default; the tiles chosen from the shape (matmul, MoE) keep to half of it."""
    calls = compile_check.pallas_grids(case.tpu, case.specs)
    assert calls, f"{case.name}: no pallas_call traced"
    for call in calls:
        assert call["vmem bytes"] <= tpu_tiling.SCOPED_VMEM_LIMIT, call
        if call["name"] in ("bi_matmul", "moe_expert_matmul"):
            assert call["vmem bytes"] <= tpu_tiling.VMEM_BUDGET, call


def _case(name):
    return next(case for case in CASES if case.name == name)


def test_decode_matmuls_take_few_grid_steps_whatever_the_rows():
    """The issue's shapes: a 64 × 4096 × 4096 matmul took 1,024 steps of 128³ tiles, a T = 1 expert
    matmul 2,048 of 128 × 128 weight blocks. The tiles now come from K and N: few steps, and the
    same weight tiles for one row as for 64."""
    case = _case("bi_matmul decode bf16")
    (call,) = compile_check.pallas_grids(case.tpu, case.specs)
    assert call["steps"] <= 32 and call["grid"][1] >= 2, call  # two column blocks: both v5p cores
    one_row = compile_check.pallas_grids(case.tpu, [jax.ShapeDtypeStruct((1, 4096), jnp.bfloat16), case.specs[1]])
    assert one_row[0]["grid"] == call["grid"], (one_row, call)
    case = _case("moe_gemv decode bf16")
    matmuls = [c for c in compile_check.pallas_grids(case.tpu, case.specs) if c["name"] == "moe_expert_matmul"]
    assert len(matmuls) == 2 and all(c["steps"] <= 64 for c in matmuls), matmuls
    assert all(c["grid"][1] == 1 for c in matmuls), matmuls  # whole rows of the weights' last dimension


def test_the_tpu_compile_refuses_a_pipeline_past_the_scoped_vmem():
    """The VMEM budget is the compiler's: the deviceless compile refuses a 19 MiB pipeline, stating the
    16 MiB limit and the size `pallas_grids` computes."""
    _need_libtpu()
    from pallas_kernels.bi_matmul import tpu as matmul_tpu

    def too_big(x, w):
        return matmul_tpu.bi_matmul(x, w, bm=128, bn=128, bk=128, out_dtype=x.dtype, tiles=(2048, 2048))

    specs = _case("bi_matmul decode bf16").specs
    (call,) = compile_check.pallas_grids(too_big, specs)
    with pytest.raises(Exception, match="scoped vmem limit") as error:
        compile_check.compile_tpu(too_big, specs, "v5e")
    size, limit = map(float, re.search(r"size ([\d.]+)M and limit ([\d.]+)M", str(error.value)).groups())
    assert limit * 2**20 == tpu_tiling.SCOPED_VMEM_LIMIT, str(error.value)
    assert size == round(call["vmem bytes"] / 2**20, 2) > limit, (size, call)


def test_the_cuda_lowering_embeds_each_kernels_triton_ir():
    """`triton_kernels` reads back what XLA would compile: one Triton module per `pallas_call`, with the
    launch the GPU variant asked for."""
    case = _case("moe_gemv decode bf16")
    kernels = compile_check.triton_kernels(compile_check.lower_cuda(case.gpu, case.specs))
    assert [k.name for k in kernels] == ["moe_expert_matmul", "moe_expert_matmul", "moe_combine"]
    assert all(f"tt.func public @{k.name}" in k.ttir for k in kernels), [k.ttir[:200] for k in kernels]
    # (T·k = 8 programs, F / block_k and D / block_k column blocks), then one program per token
    assert [k.grid for k in kernels] == [(8, 8, 1), (8, 32, 1), (1, 1, 1)]
    assert [(k.num_warps, k.num_stages) for k in kernels] == [(4, 3), (4, 3), (4, 2)]


def _need_triton():
    pytest.importorskip("triton", reason="no triton wheel (pip install -e '.[gpu-compile]'): no sm_90 compile")


def test_triton_compiles_the_lowered_kernels_for_sm90_and_reports_spills():
    """The embedded Triton IR compiles for sm_90 with the triton wheel, and ptxas's register and spill
    counts are read: the bf16 decode matmul tile at 8 warps does not spill; at 1 warp it must."""
    _need_triton()
    case = _case("bi_matmul decode bf16")
    (kernel,) = compile_check.triton_kernels(compile_check.lower_cuda(case.gpu, case.specs))
    assert (kernel.name, kernel.num_warps, kernel.num_stages) == ("bi_matmul", 8, 3)
    facts = compile_check.triton_resources(kernel)
    assert 0 < facts["registers"] <= 255 and facts["spill stores"] == facts["spill loads"] == 0, facts
    assert 0 < facts["shared"] <= compile_check.SM90_SHARED_LIMIT, facts
    squeezed = compile_check.triton_resources(dataclasses.replace(kernel, num_warps=1))
    assert squeezed["registers"] == 255 and squeezed["spill stores"] > 0 and squeezed["stack"] > 0, squeezed


# The checks must be able to fail: kernels the interpreter accepts but the real compilers refuse.


def _one_row_blocks(x, interpret=False):  # a [1, D] block of an [8, D] array breaks Mosaic's (8, 128) tiling
    return pl.pallas_call(
        lambda x_ref, o_ref: o_ref.__setitem__(..., x_ref[...] * 2),
        grid=(x.shape[0],),
        in_specs=[pl.BlockSpec((1, x.shape[1]), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((1, x.shape[1]), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        interpret=interpret,
    )(x)


def _value_slice(x):  # Triton cannot slice a loaded value
    from pallas_kernels import gpu_params

    return pl.pallas_call(
        lambda x_ref, o_ref: o_ref.__setitem__(..., x_ref[...][:8] + x_ref[...][8:]),
        out_shape=jax.ShapeDtypeStruct((8, x.shape[1]), x.dtype),
        compiler_params=gpu_params.triton(),
    )(x)


def test_the_tpu_compile_refuses_what_the_interpreter_accepts():
    _need_libtpu()
    spec = jax.ShapeDtypeStruct((8, 4096), jnp.float32)
    interpreted = _one_row_blocks(jnp.ones(spec.shape, spec.dtype), interpret=True)
    assert float(interpreted[7, 0]) == 2.0
    with pytest.raises(Exception, match="divisible by 8 and 128"):
        compile_check.compile_tpu(_one_row_blocks, [spec], "v5e")


def test_the_cuda_lowering_refuses_a_value_slice():
    with pytest.raises(Exception, match="Triton lowering: slice"):
        compile_check.lower_cuda(_value_slice, [jax.ShapeDtypeStruct((16, 128), jnp.float32)])


# The model with every kernel in it: `kernels.alignment=bitwise`, `model.moe_dispatch=auto`, sizes that
# meet the TPU's (8, 128) rule (d_model and the expert width 128), one layer.
MODEL_OVERRIDES = [
    "model.n_layers=1",
    "model.d_model=128",
    "model.expert_mlp=128",
    "model.flow_hidden=128",
    "model.flow_blocks=1",
    "train.window_chunks=5",
    "data.episode_chunks=45",
    "kernels.alignment=bitwise",
    "model.moe_dispatch=auto",
    "kernels.moe_block_k=128",
    "kernels.split_size=128",
    "kernels.block_kv=128",
]


MODEL_KERNELS = ("split_kv_attention_splits", "split_kv_attention_combine", "bi_matmul", "rms_norm")
MODEL_KERNELS += ("moe_expert_matmul", "moe_combine")


def _model_config():
    from interaction_jax import config as config_lib

    cfg = config_lib.override(config_lib.preset("tiny"), MODEL_OVERRIDES)
    one_device = config_lib.load_mesh(Path(__file__).parents[1] / "mesh_configs" / "cpu-1.yaml")
    return config_lib.validate(dataclasses.replace(cfg, mesh=one_device))


def _flat(fn, args):
    """`fn` as a function of the leaves of `args`, and those leaves; a new function object per call:
    jit caches traces by function, and the kernels' target is not in its key."""
    tree = jax.tree.structure(args)
    return (lambda *leaves: fn(*jax.tree.unflatten(tree, leaves))), jax.tree.leaves(args)


def _cuda_programs(cfg):
    """The CUDA lowerings of the loss gradient and a `microturn` (the optimizer update is XLA's own)."""
    from interaction_jax.model import cache as kv_cache
    from interaction_jax.model import step as step_lib
    from interaction_jax.testing import microturn_block, random_batch, random_chunks
    from interaction_jax.train import loss as loss_lib

    specs = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    batch = specs(random_batch(cfg.stream, 5, batch=1, seed=0))
    cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.model, 2, 256))
    block = specs(microturn_block(cfg.stream, random_chunks(cfg.stream, 0, 1, 0) * 2))
    sampling = step_lib.Sampling.from_config(cfg)

    def loss_and_grads(p, b):
        return jax.value_and_grad(lambda p: loss_lib.loss_fn(p, b, jax.random.key(1), cfg=cfg)[0])(p)

    def turn(p, c, blk):
        return step_lib.microturn(p, c, blk, jax.random.key(0), sampling, cfg=cfg)

    yield "train gradient", compile_check.lower_cuda(*_flat(loss_and_grads, (params, batch)))
    yield "microturn", compile_check.lower_cuda(*_flat(turn, (params, cache, block)))


def _tpu_programs(cfg, target):
    """The TPU executables of the trainer's own jitted train step (optimizer, shardings, donation) on a
    one-chip mesh, and of a `microturn`."""
    from interaction_jax import sharding
    from interaction_jax.model import cache as kv_cache
    from interaction_jax.model import step as step_lib
    from interaction_jax.testing import microturn_block, random_batch, random_chunks
    from interaction_jax.train import optimizer as optimizer_lib
    from interaction_jax.train import state as state_lib
    from interaction_jax.train import step as train_step_lib

    mesh = sharding.make_mesh(cfg.mesh, devices=[compile_check.tpu_device(target)])
    optimizer = optimizer_lib.make_optimizer(cfg.train)
    batch = random_batch(cfg.stream, 5, batch=1, seed=0)
    placed = train_step_lib.batch_shardings(batch, mesh, cfg)
    batch_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=placed[k]) for k, v in batch.items()}
    step_fn = train_step_lib.jit_train_step(
        cfg, optimizer, mesh, state_lib.state_shardings(cfg, optimizer, mesh), batch
    )
    state = state_lib.abstract_state(cfg, optimizer, mesh)
    # under the mesh: what the wrapper does around the jitted function
    with sharding.mesh_context(mesh, cfg.mesh), compile_check.no_persistent_cache():
        compiled = step_fn.__wrapped__.trace(state, batch_specs).lower().compile()
    yield "train step", compiled.as_text()

    params = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
    cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.model, 2, 256))
    block = microturn_block(cfg.stream, random_chunks(cfg.stream, 0, 1, 0) * 2)
    block = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), block)
    sampling = step_lib.Sampling.from_config(cfg)

    def turn(p, c, blk):
        return step_lib.microturn(p, c, blk, jax.random.key(0), sampling, cfg=cfg)

    yield "microturn", compile_check.compile_tpu(*_flat(turn, (params, cache, block)), target).as_text()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e", "v5p", "cuda"])
def test_the_bitwise_model_compiles_with_every_kernel(target):
    from interaction_jax.model import kernels

    if target != "cuda":
        _need_libtpu()
    cfg = _model_config()
    with kernels.compiled_for("gpu" if target == "cuda" else "tpu"):
        programs = dict(_cuda_programs(cfg) if target == "cuda" else _tpu_programs(cfg, target))
    assert len(programs) == 2
    for name, text in programs.items():
        # every kernel is in the program (the backward passes are the XLA VJPs)
        missing = [k for k in MODEL_KERNELS if k not in text]
        assert not missing, f"{name} for {target}: no {missing} in the compiled program"
