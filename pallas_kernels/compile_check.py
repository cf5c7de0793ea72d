"""Compile every kernel for real targets on a machine with none: the compilers' own rules, checked on CPU.

The Pallas interpreter enforces none of the rules the real compilers do (Mosaic's (8, 128) tiling and
vector layouts, Triton's power-of-two shapes and no value slicing), so a kernel that passes every
interpreted test can still fail to build on a device. Here:

- TPU: the full deviceless compile (Pallas → Mosaic → XLA executable) for a v5e or v5p chip, with
  libtpu (`pip install -e ".[tpu-compile]"`) and a topology from `jax.experimental.topologies`;
- GPU: the CUDA lowering by `jax.export` (Pallas → Triton IR, embedded in the StableHLO custom call),
  which runs every check of the Pallas → Triton lowering. XLA's own Triton → PTX step needs a GPU
  build of XLA; as an advisory stand-in, `triton_resources` compiles the embedded Triton IR for sm_90
  with the `triton` wheel's compiler and its bundled ptxas (`pip install -e ".[gpu-compile]"`) and
  reads the registers per thread and the spills ptxas reports.

    python -m pallas_kernels.compile_check            # the table: every case × {v5e, v5p, cuda}
    python -m pallas_kernels.compile_check --costs    # and the TPU cost / memory analysis per case
    python -m pallas_kernels.compile_check --grids    # and each TPU kernel's grid steps and VMEM need
    python -m pallas_kernels.compile_check --triton-regs   # and each GPU kernel's registers and spills (sm_90)

Nothing here imports `interaction_jax`; the cases are in `compile_cases.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence

import jax

from pallas_kernels import tpu_tiling

# One chip of each generation (a 2x2 slice: the smallest the topology API takes), device 0 of it.
TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}
TRITON_CALL = "__gpu$xla.gpu.triton"
SM90_SHARED_LIMIT = 232_448  # bytes of shared memory one block may take on an H100 (227 KiB, opted in)


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


@functools.cache
def tpu_device(target: str):
    """Device 0 of a deviceless `target` ("v5e" / "v5p") topology; libtpu must be installed."""
    # Without a TPU VM there is no metadata server: asking it only waits for a timeout.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # libtpu takes a machine-wide lock unless told otherwise; parallel test workers each load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return topologies.get_topology_desc(topology_name=TPU_TOPOLOGIES[target], platform="tpu").devices[0]


def _placed(specs: Sequence[jax.ShapeDtypeStruct], device) -> list[jax.ShapeDtypeStruct]:
    sharding = jax.sharding.SingleDeviceSharding(device)
    return [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in specs]


@contextlib.contextmanager
def no_persistent_cache():
    """Keep deviceless programs out of JAX's persistent compilation cache: a compile-only TPU executable is
    written there but cannot be read back without a TPU client (a warning on every later hit, and disk).
    JAX decides once per process whether the cache is on, so this raises the compile time an entry needs
    to be written instead (read at every write)."""
    least = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", least)


def compile_tpu(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct], target: str):
    """The compiled executable of `fn` on one chip of `target`; raises what Mosaic or XLA reports."""
    traced = jax.jit(fn).trace(*_placed(specs, tpu_device(target)))
    with no_persistent_cache():
        return traced.lower().compile()


def lower_cuda(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct]) -> str:
    """The StableHLO text of `fn` exported for CUDA; raises what the Pallas → Triton lowering reports.

    The Triton custom call is not on `jax.export`'s list of stable calls, hence the disabled check."""
    exported = jax.export.export(
        jax.jit(fn),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)],
    )(*specs)
    return exported.mlir_module()


def tpu_facts(compiled) -> dict:
    """What the TPU compile says of a kernel without running it: bytes accessed, flops, memory sizes."""
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    memory = compiled.memory_analysis()
    return {
        "flops": cost.get("flops", 0.0),
        "bytes accessed": cost.get("bytes accessed", sum(v for k, v in cost.items() if k.startswith("bytes accessed"))),
        "argument bytes": memory.argument_size_in_bytes,
        "output bytes": memory.output_size_in_bytes,
        "temp bytes": memory.temp_size_in_bytes,
    }


def _eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and eqn.primitive.name != "pallas_call":
                    yield from _eqns(inner)


def pallas_grids(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct]) -> list[dict]:
    """The `pallas_call`s `fn` traces to at `specs`, read from its jaxpr: each one's name, grid, grid
    steps, and the VMEM its pipeline needs on a TPU (every block double-buffered, plus scratch; block
    shapes padded to the (8, 128) tiles: `tpu_tiling.vmem_bytes`) — facts of the traced program, no device needed."""
    calls = []
    for eqn in _eqns(jax.make_jaxpr(fn)(*specs).jaxpr):
        if eqn.primitive.name != "pallas_call":
            continue
        grid = eqn.params["grid_mapping"]
        blocks = sum(tpu_tiling.vmem_bytes(b.block_aval.shape, b.block_aval.dtype) for b in grid.block_mappings)
        scratch = sum(tpu_tiling.vmem_bytes(s.shape, s.dtype) for s in grid.scratch_avals)
        calls.append(
            {
                "name": eqn.params["name"],
                "grid": tuple(grid.grid),
                "steps": math.prod(grid.grid),
                "vmem bytes": 2 * blocks + scratch,
            }
        )
    return calls


@dataclasses.dataclass(frozen=True)
class TritonKernel:
    """One Triton kernel of a CUDA lowering: its Triton IR as text and the launch XLA would use."""

    name: str
    ttir: str
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]


def triton_kernels(module: str) -> list[TritonKernel]:
    """The Triton kernels embedded in the StableHLO text `module` (from `lower_cuda`): each
    `__gpu$xla.gpu.triton` custom call carries its kernel as MLIR bytecode of the Triton dialect
    jaxlib bundles, printed here as text with jaxlib's own MLIR."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir
    from jax._src.lib.triton import dialect as tt_dialect

    context = mlir.make_ir_context()
    tt_dialect.register_dialect(context)
    kernels = []

    def kernel(config) -> TritonKernel:
        def number(key):
            return ir.IntegerAttr(config[key]).value

        return TritonKernel(
            name=ir.StringAttr(config["name"]).value,
            ttir=str(ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)),
            num_warps=number("num_warps"),
            num_stages=number("num_stages"),
            grid=(number("grid_x"), number("grid_y"), number("grid_z")),
        )

    def visit(op):
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    attributes = child.operation.attributes
                    if child.operation.name == "stablehlo.custom_call" and (
                        ir.StringAttr(attributes["call_target_name"]).value == TRITON_CALL
                    ):
                        kernels.append(kernel(ir.DictAttr(attributes["mhlo.backend_config"])))
                    visit(child.operation)

    with context:
        visit(ir.Module.parse(module).operation)
    return kernels


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_resources(kernel: TritonKernel, capability: int = 90) -> dict:
    """Compile `kernel`'s Triton IR for sm_`capability` with the `triton` wheel (no GPU needed) and read
    what its ptxas run reports (`-v`): registers per thread, spill bytes, stack frame; and the shared
    memory Triton allocates. The compile is forced (no cache) so ptxas runs and its log is captured.

    Advisory: XLA compiles the same IR with its own Triton fork, whose passes may differ."""
    import contextlib
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for group in (knobs.compilation, knobs.nvidia, knobs.cache):
            stack.enter_context(group.scope())
        knobs.compilation.always_compile = True
        knobs.cache.dir = tmp
        knobs.nvidia.dump_ptxas_log = True  # ptxas's -v log, printed by Triton
        source = os.path.join(tmp, f"{kernel.name}.ttir")
        with open(source, "w") as f:
            f.write(kernel.ttir)
        # fused multiply-adds on, as XLA compiles them (and Triton 3.9 warns when it is left unset)
        options = {"num_warps": kernel.num_warps, "num_stages": kernel.num_stages, "enable_fp_fusion": True}
        with contextlib.redirect_stdout(io.StringIO()) as log:
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    log = log.getvalue()

    def read(pattern):
        found = re.search(pattern, log)
        if found is None:
            raise ValueError(f"ptxas -v for {kernel.name}: no {pattern!r} in {log!r}")
        return int(found.group(1))

    return {
        "registers": read(r"Used (\d+) registers"),
        "spill stores": read(r"(\d+) bytes spill stores"),
        "spill loads": read(r"(\d+) bytes spill loads"),
        "stack": read(r"(\d+) bytes stack frame"),
        "shared": compiled.metadata.shared,
        "triton": triton.__version__,
    }


def _main() -> None:
    import argparse
    import time

    from pallas_kernels.compile_cases import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--costs", action="store_true", help="print the TPU v5e cost and memory analysis")
    parser.add_argument("--grids", action="store_true", help="print each TPU kernel's grid steps and VMEM need")
    parser.add_argument(
        "--triton-regs",
        action="store_true",
        help="compile each GPU kernel's Triton IR for sm_90 with the triton wheel: registers and spills",
    )
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    for case in CASES:
        if args.only not in case.name:
            continue
        cells = []
        for target in ("v5e", "v5p", "cuda"):
            start = time.perf_counter()
            try:
                if target == "cuda":
                    lower_cuda(case.gpu, case.specs)
                else:
                    compile_tpu(case.tpu, case.specs, target)
                cell = f"{target}: compiles ({time.perf_counter() - start:.1f} s)"
            except Exception as error:  # the table reports every failure, it does not stop at one
                cell = f"{target}: FAILS {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            cells.append(cell)
        print(f"{case.name:<40} " + " | ".join(cells), flush=True)
        if args.grids:
            for call in pallas_grids(case.tpu, case.specs):
                print(
                    f"    tpu {call['name']:<26} grid {call['grid']}: {call['steps']:,} steps, "
                    f"VMEM {call['vmem bytes'] / 2**20:.2f} MiB",
                    flush=True,
                )
        if args.triton_regs:
            for kernel in triton_kernels(lower_cuda(case.gpu, case.specs)):
                try:
                    facts = triton_resources(kernel)
                    cell = (
                        f"{facts['registers']} registers, spills {facts['spill stores']} B stored / "
                        f"{facts['spill loads']} B loaded, stack {facts['stack']} B, shared {facts['shared']:,} B"
                    )
                    if facts["shared"] > SM90_SHARED_LIMIT:
                        cell += f" (past the {SM90_SHARED_LIMIT:,} B an sm_90 block may take)"
                except Exception as error:  # advisory: report what fails, keep going
                    cell = f"FAILS {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(
                    f"    sm_90 {kernel.name:<26} warps {kernel.num_warps}, stages {kernel.num_stages}: {cell}",
                    flush=True,
                )
        if args.costs:
            for label, fn in (("kernel", case.tpu), ("xla reference", case.reference)):
                facts = tpu_facts(compile_tpu(fn, case.specs, "v5e"))
                print(f"    v5e {label:<14} " + ", ".join(f"{k} {v:,.0f}" for k, v in facts.items()), flush=True)


if __name__ == "__main__":
    _main()
