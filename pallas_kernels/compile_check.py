"""Compile every kernel for real targets on a machine with none: the compilers' own rules, checked on CPU.

The Pallas interpreter enforces none of the rules the real compilers do (Mosaic's (8, 128) tiling and
vector layouts, Triton's power-of-two shapes and no value slicing), so a kernel that passes every
interpreted test can still fail to build on a device. Here:

- TPU: the full deviceless compile (Pallas → Mosaic → XLA executable) for a v5e or v5p chip, with
  libtpu (`pip install -e ".[tpu-compile]"`) and a topology from `jax.experimental.topologies`;
- GPU: the CUDA lowering by `jax.export` (Pallas → Triton IR, embedded in the StableHLO custom call),
  which runs every check of the Pallas → Triton lowering; the Triton → PTX step needs a GPU build of
  XLA and is not run here.

    python -m pallas_kernels.compile_check            # the table: every case × {v5e, v5p, cuda}
    python -m pallas_kernels.compile_check --costs    # and the TPU cost / memory analysis per case

Nothing here imports `interaction_jax`; the cases are in `compile_cases.py`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence

import jax

# One chip of each generation (a 2x2 slice: the smallest the topology API takes), device 0 of it.
TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}
TRITON_CALL = "__gpu$xla.gpu.triton"


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


def compile_tpu(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct], target: str):
    """The compiled executable of `fn` on one chip of `target`; raises what Mosaic or XLA reports."""
    return jax.jit(fn).trace(*_placed(specs, tpu_device(target))).lower().compile()


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


def _main() -> None:
    import argparse
    import time

    from pallas_kernels.compile_cases import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--costs", action="store_true", help="print the TPU v5e cost and memory analysis")
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
        if args.costs:
            for label, fn in (("kernel", case.tpu), ("xla reference", case.reference)):
                facts = tpu_facts(compile_tpu(fn, case.specs, "v5e"))
                print(f"    v5e {label:<14} " + ", ".join(f"{k} {v:,.0f}" for k, v in facts.items()), flush=True)


if __name__ == "__main__":
    _main()
