"""Pallas kernels, one package per op, usable on their own (nothing here imports `interaction_jax`).

Each op folder holds `reference.py` (pure jnp: the spec), `gpu.py` (Pallas GPU, Triton lowering),
`tpu.py` (Pallas Mosaic TPU), `api.py` (the public function, choosing an implementation) and
`bench.py`. Ops:

- `split_kv_attention`: causal GQA attention of any number of queries against a KV cache, with the
  KV axis cut at absolute multiples of a fixed split size (decode and prefill take the same path);
- `bi_matmul`: a batch-invariant matmul (fixed tiles, float32 accumulation, no split-K);
- `rms_norm`: one row per program;
- `moe_gemv` / `moe_gmm`: the SwiGLU expert FFN of a mixture of experts, for few tokens (one program
  per token and slot, only the selected experts' weights read) and many (tokens sorted by expert into
  whole tiles), bit-identical per token; `moe_gemv_slots` / `moe_gmm_slots` and `moe_combine` are
  their two halves, for expert parallelism.

The contract they share: tile and split sizes come from a config object, never from the batch; a
row's (a query's) result never depends on the other rows, on how many there are, or on unwritten
cache slots. `docs/kernels.md` is the authoring guide.
"""

from pallas_kernels.bi_matmul.api import MatmulConfig, bi_matmul
from pallas_kernels.moe.api import MoEConfig, moe_combine, moe_gemv, moe_gemv_slots, moe_gmm, moe_gmm_slots
from pallas_kernels.registry import IMPLEMENTATIONS, resolve
from pallas_kernels.rms_norm.api import rms_norm
from pallas_kernels.split_kv_attention.api import SplitKVConfig, split_kv_attention

__all__ = [
    "IMPLEMENTATIONS",
    "MatmulConfig",
    "MoEConfig",
    "SplitKVConfig",
    "bi_matmul",
    "moe_combine",
    "moe_gemv",
    "moe_gemv_slots",
    "moe_gmm",
    "moe_gmm_slots",
    "resolve",
    "rms_norm",
    "split_kv_attention",
]
