"""The shapes every kernel is compiled at by `compile_check` (and its tests): one case per kernel and regime.

Realistic sizes, few cases: compile time barely depends on the sizes, but each case costs a compile
per target. Attention: B 4, 32 query / 8 KV heads of 128, an 8k cache, decode (T 1) and prefill
(T 128), and the `tml-small-shape` heads (40 / 8: a group of 5, not a power of two) in float32. The
matmul and the norm at the model's widths (4096, and the 5120 of `tml-small-shape`); MoE with E 64,
k 8, D 4096, F 1024 at decode (T 1: gemv) and prefill (T 64: gmm, past the gemv bound of 32), and
`tml-small-shape`'s D 5120, F 1440 at decode (E 64 of its 256: the kernels do not depend on E). Each
case names the GPU and TPU variant and the XLA reference it is measured against.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.bi_matmul import gpu as matmul_gpu
from pallas_kernels.bi_matmul import tpu as matmul_tpu
from pallas_kernels.bi_matmul.api import MatmulConfig, bi_matmul
from pallas_kernels.moe import api as moe_api
from pallas_kernels.moe import gpu as moe_gpu
from pallas_kernels.moe import reference as moe_reference
from pallas_kernels.moe import tpu as moe_tpu
from pallas_kernels.rms_norm import gpu as norm_gpu
from pallas_kernels.rms_norm import reference as norm_reference
from pallas_kernels.rms_norm import tpu as norm_tpu
from pallas_kernels.rms_norm.api import rms_norm
from pallas_kernels.split_kv_attention import gpu as attention_gpu
from pallas_kernels.split_kv_attention import reference as attention_reference
from pallas_kernels.split_kv_attention import tpu as attention_tpu
from pallas_kernels.split_kv_attention.api import SplitKVConfig, split_kv_attention

BF16, F32, I32 = jnp.bfloat16, jnp.float32, jnp.int32


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    gpu: Callable
    tpu: Callable
    reference: Callable
    specs: tuple[jax.ShapeDtypeStruct, ...]


def _spec(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _compiled(fn):
    """A variant as an `implementation=` callable: compiled (the variants default to interpret=False)."""
    return functools.partial(fn, interpret=False)


def _attention(name, *, b, t, hq, hkv, d, s, dtype) -> Case:
    config = SplitKVConfig(split_size=512, block_kv=128)

    def with_variant(variant):
        return lambda q, k, v, pos, lengths: split_kv_attention(
            q, k, v, pos, lengths, config=config, implementation=_compiled(variant)
        )

    def reference(q, k, v, pos, lengths):
        return attention_reference.softmax_attention(q, k, v, pos, lengths, scale=d**-0.5)

    specs = (_spec((b, t, hq, d), dtype), _spec((b, s, hkv, d), dtype), _spec((b, s, hkv, d), dtype))
    return Case(
        name,
        with_variant(attention_gpu.split_kv_attention),
        with_variant(attention_tpu.split_kv_attention),
        reference,
        (*specs, _spec((b, t), I32), _spec((b,), I32)),
    )


def _matmul(name, *, m, k, n, dtype) -> Case:
    config = MatmulConfig()

    def with_variant(variant):
        return lambda x, w: bi_matmul(x, w, config=config, implementation=_compiled(variant))

    def reference(x, w):
        return jnp.dot(x, w, preferred_element_type=F32).astype(dtype)

    specs = (_spec((m, k), dtype), _spec((k, n), dtype))
    return Case(name, with_variant(matmul_gpu.bi_matmul), with_variant(matmul_tpu.bi_matmul), reference, specs)


def _norm(name, *, m, d, dtype) -> Case:
    def with_variant(variant):
        return lambda x, scale: rms_norm(x, scale, implementation=_compiled(variant))

    def reference(x, scale):
        return norm_reference.rms_norm(x, scale, eps=1e-6)

    specs = (_spec((m, d), dtype), _spec((d,), F32))
    return Case(name, with_variant(norm_gpu.rms_norm), with_variant(norm_tpu.rms_norm), reference, specs)


def _moe(name, *, t, e, k, d, f, dtype, dispatch) -> Case:
    slots_op = moe_api.moe_gemv_slots if dispatch == "gemv" else moe_api.moe_gmm_slots
    variants = moe_api.GEMV_VARIANTS if dispatch == "gemv" else moe_api.GMM_VARIANTS

    def with_backend(backend, slots_variant):
        def run(x, ids, weights, w_gate, w_up, w_down):
            y = slots_op(x, ids, w_gate, w_up, w_down, implementation=_compiled(slots_variant))
            return moe_api.moe_combine(y, weights, implementation=_compiled(backend.combine))

        return run

    def reference(x, ids, weights, w_gate, w_up, w_down):
        return moe_reference.ragged_ffn(x, ids, weights, w_gate, w_up, w_down)

    specs = (
        _spec((t, d), dtype),
        _spec((t, k), I32),
        _spec((t, k), F32),
        _spec((e, d, f), dtype),
        _spec((e, d, f), dtype),
        _spec((e, f, d), dtype),
    )
    return Case(name, with_backend(moe_gpu, variants["gpu"]), with_backend(moe_tpu, variants["tpu"]), reference, specs)


CASES = (
    _attention("split_kv_attention decode bf16", b=4, t=1, hq=32, hkv=8, d=128, s=8192, dtype=BF16),
    _attention("split_kv_attention prefill bf16", b=1, t=128, hq=32, hkv=8, d=128, s=8192, dtype=BF16),
    _attention("split_kv_attention tml decode f32", b=4, t=1, hq=40, hkv=8, d=128, s=8192, dtype=F32),
    _matmul("bi_matmul decode bf16", m=64, k=4096, n=4096, dtype=BF16),
    _matmul("bi_matmul tml f32", m=256, k=5120, n=1024, dtype=F32),
    _norm("rms_norm bf16", m=64, d=4096, dtype=BF16),
    _norm("rms_norm tml f32", m=8, d=5120, dtype=F32),
    _moe("moe_gemv decode bf16", t=1, e=64, k=8, d=4096, f=1024, dtype=BF16, dispatch="gemv"),
    _moe("moe_gmm prefill bf16", t=64, e=64, k=8, d=4096, f=1024, dtype=BF16, dispatch="gmm"),
    # `tml-small-shape`'s experts: D 5120, F 1440 (not a multiple of 128: zero-padded inside the kernels)
    _moe("moe_gemv tml decode bf16", t=1, e=64, k=8, d=5120, f=1440, dtype=BF16, dispatch="gemv"),
)
