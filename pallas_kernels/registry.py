"""Choosing an implementation of an op: "reference", "pallas", "interpret", a named variant, or a callable.

- "reference": the op's pure-jnp spec (`reference.py`).
- "pallas": the Pallas kernel compiled for the default backend (`gpu.py` on GPUs, `tpu.py` on TPUs).
- "interpret": the same kernel run by the Pallas interpreter: on CPU the GPU variant (`interpret=True`);
  "interpret_tpu" runs the TPU variant under `pltpu.InterpretParams()`.
- "pallas_gpu", "pallas_tpu", "interpret_gpu": one variant by name (a compiled one even on a CPU host:
  what a deviceless compile for a GPU or TPU traces).
- a callable: used as it is (it takes the op's arguments).
- None: the default for the backend: "pallas" on GPU and TPU, "reference" on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax

IMPLEMENTATIONS = ("reference", "pallas", "interpret", "pallas_gpu", "pallas_tpu", "interpret_gpu", "interpret_tpu")


def default_implementation(backend: str | None = None) -> str:
    backend = backend or jax.default_backend()
    return "pallas" if backend in ("gpu", "tpu") else "reference"


def resolve(
    op: str, implementation: str | Callable | None, variants: Mapping[str, Callable], backend: str | None = None
) -> Callable:
    """The function `implementation` names among `variants` ({"reference", "gpu", "tpu"} → fn(…, interpret))."""
    if callable(implementation):
        return implementation
    backend = backend or jax.default_backend()
    name = implementation or default_implementation(backend)
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{op}: unknown implementation {name!r}; use one of {IMPLEMENTATIONS} or a callable")
    if name == "reference":
        return variants["reference"]
    mode, _, variant = name.partition("_")
    if mode == "pallas" and not variant and backend == "cpu":
        raise ValueError(f"{op}: implementation {name!r} compiles a GPU or TPU kernel; on CPU use 'interpret'")
    # A named variant ("pallas_tpu") is that kernel whatever the default backend: a deviceless compile
    # for a TPU traces it on a CPU host.
    if not variant:
        variant = "tpu" if backend == "tpu" else "gpu"
    fn = variants[variant]
    interpret = mode == "interpret"
    return lambda *args, **kwargs: fn(*args, interpret=interpret, **kwargs)
