"""Compile time of the trainer's jitted train step with the layers scanned and unrolled (`model.scan_layers`).

    python benchmarks/scan_compile.py --preset small                  # for this machine's CPU (mesh cpu-1)
    python benchmarks/scan_compile.py --preset tml-small-shape --mesh mesh_configs/tpu-v5p-128.yaml
                                                                      # deviceless, for the mesh's TPU topology

The program is `aot.train_program`: the trainer's `jit_train_step` (loss, gradients, the AdamW update, the
state shardings, donation) traced from shapes only, so nothing is allocated or run. A TPU
mesh compiles for compile-only devices of its topology (`aot.topology_devices`, needs libtpu). Prints
trace+lower and compile seconds per layout and the compiled program's size (HLO text), as JSON lines; a
compile that XLA refuses (a program that does not fit the chip's HBM) prints its error and the seconds
spent until then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

from interaction_jax import aot, sharding
from interaction_jax import config as config_lib


def compile_train_step(cfg: config_lib.Config, devices: list) -> dict:
    mesh = sharding.make_mesh(cfg.mesh, devices)
    step_fn, (state, specs) = aot.train_program(cfg, mesh)  # the trainer's own jitted step, from shapes
    with sharding.mesh_context(mesh, cfg.mesh):  # what the wrapper does around the jitted function
        start = time.perf_counter()
        lowered = step_fn.trace(state, specs).lower()
        traced_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            outcome = {"hlo_chars": len(lowered.compile().as_text())}
        except jax.errors.JaxRuntimeError as e:  # e.g. XLA's HBM check, at the end of compilation
            outcome = {"error": str(e).splitlines()[0][:200]}
        compile_s = time.perf_counter() - start
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    return {
        "scan_layers": cfg.model.scan_layers,
        "n_layers": cfg.model.n_layers,
        "params": params,
        "trace_lower_s": round(traced_s, 1),
        "compile_s": round(compile_s, 1),
    } | outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--mesh", default="mesh_configs/cpu-1.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--layouts", nargs="+", default=["true", "false"], help="scan_layers values, in order")
    args = parser.parse_args()
    cfg = config_lib.override(config_lib.preset(args.preset), args.set)
    cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(args.mesh))
    devices = aot.topology_devices(cfg.mesh) if cfg.mesh.device_kind == "tpu" else jax.devices()[:1]
    for scan in args.layouts:
        layout = config_lib.override(cfg, [f"model.scan_layers={scan}"])
        layout = config_lib.validate(layout, len(devices), purpose="train")
        result = compile_train_step(layout, devices)
        print(json.dumps({"preset": args.preset, "mesh": cfg.mesh.name, "devices": len(devices)} | result), flush=True)


if __name__ == "__main__":
    main()
