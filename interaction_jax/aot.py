"""Deviceless TPU compile of the real train step and serving tick (`interaction-jax plan --compile`).

With libtpu installed (`pip install -e ".[tpu-compile]"`), JAX compiles for a TPU topology that is not
attached: `jax.experimental.topologies` hands out compile-only devices of the mesh config's
`topology` (× the slices its dcn sizes ask for), `sharding.make_mesh` lays the mesh over them as it
would over real chips, and the trainer's own jitted `train_step` (optimizer update, state shardings,
donation) and the serving engine's jitted tick (`microturn` with the KV cache sharded by its logical
axes) are traced from shapes, lowered and compiled. Nothing runs; what comes back is what XLA:TPU
says of the program per device: memory, FLOPs, bytes accessed and the collectives it inserted, from
which a roofline step time and MFU are *estimated* against the chip's published peaks.

Every report is a frozen dataclass built by pure functions of (config, compiled program), so the same
config under two settings compares in one call (`compare`; e.g. scanned vs unrolled layers:
`plan --compile --programs train --compare model.scan_layers=false,true`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from interaction_jax import config as config_lib
from interaction_jax import sharding, stream
from interaction_jax.config import Config, ConfigError
from pallas_kernels import compile_check

INSTALL_HINT = 'pip install -e ".[tpu-compile]"'
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_tflops: float  # peak dense bf16 matmul throughput per chip
    hbm_gbps: float  # HBM bandwidth per chip, GB/s (1e9 bytes)
    hbm_gib: float  # HBM capacity per chip


# Published per-chip peaks, from Google Cloud's TPU system-architecture pages (as of 2026):
# v4  https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 1,200 GB/s, 32 GiB
# v5e https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16,   819 GB/s, 16 GiB
# v5p https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 2,765 GB/s, 95 GiB
# v6e https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 1,640 GB/s, 32 GiB
CHIPS = {
    "v4": Chip("v4", 275.0, 1200.0, 32.0),
    "v5e": Chip("v5e", 197.0, 819.0, 16.0),
    "v5p": Chip("v5p", 459.0, 2765.0, 95.0),
    "v6e": Chip("v6e", 918.0, 1640.0, 32.0),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all", "collective-permute")

KNOBS = (
    "model.remat=block (recompute each block's activations in the backward pass)",
    "train.grad_accum=N (N microbatches per step: activations of batch_size/N rows at a time)",
    "a smaller train.batch_size or train.window_chunks, or serve.max_sessions / serve.max_len for the tick",
    "more chips on the mesh axes that shard weights (mesh.axes.fsdp, expert, tensor) or a bigger topology",
)


class LibtpuMissing(RuntimeError):
    """The deviceless TPU compile needs libtpu, which is not installed."""


class DoesNotFit(RuntimeError):
    """A compiled program needs more HBM per chip than the chip has."""


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def require_libtpu() -> None:
    if not libtpu_available():
        raise LibtpuMissing(
            "`--compile` compiles for TPU without a TPU, which needs libtpu (the version pinned to the "
            f"project's jax): {INSTALL_HINT}"
        )


# ----------------------------------------------------------------------------------------------
# Topology


def chip_of(topology: str) -> Chip:
    """The chip of a topology name such as "v5p:4x4x4" (the part before the colon)."""
    generation = topology.split(":")[0].lower()
    if generation not in CHIPS:
        raise ConfigError("mesh.topology", f"no published peaks for TPU {generation!r}", f"use one of {list(CHIPS)}")
    return CHIPS[generation]


def topology_devices(mesh_cfg: config_lib.MeshConfig) -> list:
    """Compile-only devices of the mesh config's topology, one slice per dcn step (multislice: each
    device carries its `slice_index`, so `sharding.make_mesh` keeps the ICI axes within a slice)."""
    require_libtpu()
    if mesh_cfg.device_kind != "tpu" or not mesh_cfg.topology:
        raise ConfigError(
            "mesh.topology",
            f"mesh {mesh_cfg.name} names no TPU topology to compile for",
            "use a TPU mesh config (mesh_configs/tpu-*.yaml) or set mesh.topology, e.g. v5e:2x4",
        )
    # No TPU VM here: no metadata server to ask, and libtpu may be loaded by more than one process.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    slices = config_lib.mesh_slices(mesh_cfg)
    kwargs = {"num_slices": slices} if slices > 1 else {}
    try:
        desc = topologies.get_topology_desc(topology_name=mesh_cfg.topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu's own message (an unknown topology, a bad shape)
        raise ConfigError(
            "mesh.topology", f"libtpu does not know topology {mesh_cfg.topology!r}: {e}", "e.g. v5e:2x4, v5p:4x4x4"
        ) from e
    return list(desc.devices)


# ----------------------------------------------------------------------------------------------
# The two programs, as the trainer and the server jit them


def _spec(shape, dtype, sharding_: NamedSharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def train_batch(cfg: Config) -> dict[str, np.ndarray]:
    """One global training batch's shapes as the data pipeline makes them ([batch_size, …] per key, plus
    the bookkeeping `task` and the voice-activity targets `user_speaking`), laid out by
    `stream.assemble_window` from blank chunks (one row, broadcast)."""
    s = cfg.stream
    chunks = [
        stream.ChunkPayload(
            audio_in=np.zeros((s.audio_slots, s.stack, s.n_mels), np.uint8),
            text_in=np.zeros((s.text_in_slots,), np.int32),
            text_out=np.zeros((s.text_out_slots,), np.int32),
            audio_out_mel=np.full((s.audio_slots, s.stack, s.n_mels), s.dmel_min, np.float32),
            frame=np.zeros((s.frame_height, s.frame_width, 3), np.uint8) if stream.chunk_has_frame(s, k) else None,
        )
        for k in range(cfg.train.window_chunks)
    ]
    row = stream.assemble_window(s, 0, chunks) | {
        "task": np.zeros((), np.int32),
        "user_speaking": np.zeros((cfg.train.window_chunks,), np.float32),
    }
    return {k: np.broadcast_to(v, (cfg.train.batch_size, *v.shape)) for k, v in row.items()}


def train_program(cfg: Config, mesh) -> tuple[Any, tuple]:
    """The trainer's jitted `train_step` (as `train.loop` builds it) and its abstract, sharded arguments."""
    from interaction_jax.train import optimizer as optimizer_lib
    from interaction_jax.train import state as state_lib
    from interaction_jax.train import step as train_step_lib

    opt = optimizer_lib.make_optimizer(cfg.train)
    shardings = state_lib.state_shardings(cfg, opt, mesh)
    batch = train_batch(cfg)
    placed = train_step_lib.batch_shardings(batch, mesh, cfg)
    batch_specs = {k: _spec(v.shape, v.dtype, placed[k]) for k, v in batch.items()}
    step_fn = train_step_lib.jit_train_step(cfg, opt, mesh, shardings, batch)
    # `__wrapped__`: the jitted function inside the wrapper that enters the mesh context (entered here).
    return step_fn.__wrapped__, (state_lib.abstract_state(cfg, opt, mesh), batch_specs)


def serve_program(cfg: Config, mesh) -> tuple[Any, tuple]:
    """The serving engine's jitted tick (`microturn` over all `serve.max_sessions` rows) and its arguments:
    parameters sharded as in training, the KV cache by its logical axes, the rows of the input block,
    seeds and resets over `cache_batch`, the sampling settings replicated."""
    from interaction_jax.model import cache as kv_cache
    from interaction_jax.model import step as step_lib
    from interaction_jax.serve import engine
    from interaction_jax.train import optimizer as optimizer_lib
    from interaction_jax.train import state as state_lib

    rows, replicated = cfg.serve.max_sessions, NamedSharding(mesh, PartitionSpec())
    param_shardings = state_lib.state_shardings(cfg, optimizer_lib.make_optimizer(cfg.train), mesh).params
    params = jax.tree.map(
        lambda a, sh: _spec(a.shape, a.dtype, sh),
        jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0))),
        param_shardings,
    )
    cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.model, rows, cfg.serve.max_len))
    cache_shardings = sharding.axes_tree_shardings(kv_cache.cache_logical_axes(cfg.model), mesh, cfg.mesh)
    cache = jax.tree.map(lambda a, sh: _spec(a.shape, a.dtype, sh), cache, cache_shardings)

    def by_row(a) -> jax.ShapeDtypeStruct:
        a = np.asarray(a)
        return _spec(
            a.shape, a.dtype, sharding.logical_sharding(("cache_batch",) + (None,) * (a.ndim - 1), mesh, cfg.mesh)
        )

    block = {k: by_row(v) for k, v in engine.input_block(cfg.stream, [None] * rows).items()}
    seeds, reset = by_row(np.zeros(rows, np.uint32)), by_row(np.zeros(rows, bool))
    sampling = jax.tree.map(lambda x: _spec(np.shape(x), x.dtype, replicated), step_lib.Sampling.from_config(cfg))
    return engine.jitted_tick(cfg), (params, cache, block, seeds, reset, sampling)


# ----------------------------------------------------------------------------------------------
# Reading the compiled program: collectives

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\("
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_GROUPS = re.compile(r"replica_groups=(?:\{\{([\d,]*)\}|\[\d+,(\d+)\]<=)")


def shape_bytes(hlo_type: str) -> int:
    """Bytes of the arrays in an HLO type ("f32[8,128]{1,0}", or a tuple of them: summed)."""
    total = 0
    for dtype, dims in _SHAPE.findall(hlo_type):
        bits = _BITS.get(dtype) or (8 if dtype.startswith("f8") else int(dtype[1:]))
        total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
    return total


def _split_top(tuple_type: str) -> list[str]:
    """The elements of an HLO tuple type "(a, (b, c), d)" at depth one."""
    parts, depth, cur = [], 0, ""
    for ch in tuple_type.strip()[1:-1]:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur.strip() else parts


def _computations(hlo: str) -> tuple[str | None, dict[str, list[str]]]:
    """(entry name, {computation name: its instruction lines}) of an HLO module's text."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group("name")
            comps[current] = []
            entry = current if line.startswith("ENTRY") else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return entry, comps


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
    """Iterations of a `while`: XLA's known_trip_count when it gives one, else the bound N of a condition
    `i < N` on a constant (how `lax.scan` and `fori_loop` lower); 1 when neither says."""
    known = _KNOWN_TRIPS.search(line)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=%([\w.\-]+)", line)
    body = comps.get(cond.group(1), []) if cond else []
    bounds = [int(c) for ln in body for c in re.findall(r"s32\[\]\S*\s+constant\((\d+)\)", ln)]
    if len(bounds) == 1 and any("direction=LT" in ln for ln in body):
        return bounds[0]
    return 1


def _runs(entry: str | None, comps: dict[str, list[str]]) -> dict[str, int]:
    """How often each computation runs per call of the entry: a while body its trip count times its
    caller's runs; what a line calls otherwise (fusions, branches, reducers) as often as the caller."""
    runs: dict[str, int] = {}

    def visit(name: str, n: int) -> None:
        runs[name] = runs.get(name, 0) + n
        for line in comps[name]:
            if re.search(r"\b(async-done|async-update)\(", line):  # the same computation as its async-start
                continue
            trips = _trip_count(line, comps) if " while(" in line else 1
            callees = [(kind, c) for kind, c in _CALLS.findall(line)]
            callees += [("branch", c) for g in _BRANCHES.findall(line) for c in re.findall(r"%([\w.\-]+)", g)]
            for kind, callee in callees:
                if callee in comps and kind != "to_apply":  # reducers of a collective are not ops that run
                    visit(callee, n * (trips if kind == "body" else 1))

    if entry in comps:
        visit(entry, 1)
    return runs


def loop_trips(hlo: str) -> tuple[int, ...]:
    """The trip count of every `while` loop that runs (as `_trip_count` reads it): the entry's first.

    XLA's cost analysis counts a loop body once, so where a program loops (a scanned layer stack, the
    serving tick's output slots, grad accumulation) its FLOPs and bytes accessed cover one trip."""
    entry, comps = _computations(hlo)
    runs = _runs(entry, comps)
    order = [entry, *(name for name in comps if name != entry)]
    return tuple(
        _trip_count(line, comps) for name in order if runs.get(name) for line in comps[name] if " while(" in line
    )


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    count: int  # executions per step: an op in a loop body of n trips counts n times
    bytes: int  # per device per step: each execution's larger buffer (input or output), summed


def _group_size(line: str) -> int:
    m = _GROUPS.search(line)
    if not m:
        return 1
    return len(m.group(1).split(",")) if m.group(1) is not None else int(m.group(2))


def parse_collectives(hlo: str) -> dict[str, Collective]:
    """The collectives of an optimized HLO module, by kind, with executions and bytes per device.

    An async pair counts once, at its `-start`. An op's bytes are its larger buffer: the result of an
    all-reduce, all-gather (the gathered array), all-to-all or collective-permute, the input of a
    reduce-scatter (result × group size); a ragged all-to-all's result, its receive buffer, whose static
    size is the routing's worst case (what crosses the links depends on the routing, and is smaller).
    Executions follow the call graph: an op in a while body of n trips counts n times (so a scanned
    layer stack counts every layer)."""
    entry, comps = _computations(hlo)
    runs = _runs(entry, comps)
    count = dict.fromkeys(COLLECTIVES, 0)
    nbytes = dict.fromkeys(COLLECTIVES, 0)
    for name, lines in comps.items():
        n = runs.get(name, 0)
        for line in lines:
            m = _INSTR.match(line)
            if not m or not n:
                continue
            op, hlo_type = m.group("op"), m.group("type")
            if m.group("start") and hlo_type.startswith("("):  # (operand, result, scratch…) of an async start
                size = max((shape_bytes(p) for p in _split_top(hlo_type)[:2]), default=0)
            else:
                size = shape_bytes(hlo_type)
            if op == "reduce-scatter":
                size *= _group_size(line)
            count[op] += n
            nbytes[op] += n * size
    return {k: Collective(k, count[k], nbytes[k]) for k in COLLECTIVES}


# ----------------------------------------------------------------------------------------------
# Biggest buffers (for the message of a program that does not fit)


@dataclasses.dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    kind: str  # "argument (per device)", "intermediate (global shape)" or "… (per device, in shard_map)"


def argument_buffers(args: tuple, names: Sequence[str] = ()) -> list[Buffer]:
    """Every argument leaf as the shard one device holds (from its sharding), largest first; argument i
    is called `names[i]` where given."""
    out = []
    for path, a in jax.tree_util.tree_flatten_with_path(args)[0]:
        index = path[0].idx if isinstance(path[0], jax.tree_util.SequenceKey) else -1
        path = path[1:] if 0 <= index < len(names) else path
        prefix = names[index] if 0 <= index < len(names) else ""
        shape = tuple(a.sharding.shard_shape(a.shape)) if getattr(a, "sharding", None) is not None else a.shape
        nbytes = math.prod(shape) * jnp.dtype(a.dtype).itemsize
        out.append(
            Buffer(prefix + jax.tree_util.keystr(path), shape, str(jnp.dtype(a.dtype)), nbytes, "argument (per device)")
        )
    return sorted(out, key=lambda b: -b.bytes)


def intermediate_buffers(jaxpr: Any, limit: int = 5) -> list[Buffer]:
    """The largest values the traced program computes, named by the model's module path and the
    primitive; one entry per (name, shape). Shapes are global (before XLA splits them over the mesh),
    except inside a `shard_map`, whose body sees one device's block."""
    found: dict[tuple, Buffer] = {}

    def walk(jp, local: bool = False) -> None:
        for eqn in jp.eqns:
            where = str(eqn.source_info.name_stack) or "(top level)"
            for v in eqn.outvars:
                aval = getattr(v, "aval", None)
                if getattr(aval, "shape", None) is None or not hasattr(aval, "dtype"):
                    continue
                try:
                    itemsize = jnp.dtype(aval.dtype).itemsize
                except TypeError:  # PRNG keys and other extended dtypes
                    continue
                b = Buffer(
                    f"{where} ({eqn.primitive.name})",
                    tuple(aval.shape),
                    str(aval.dtype),
                    math.prod(aval.shape) * itemsize,
                    "intermediate (per device, in shard_map)" if local else "intermediate (global shape)",
                )
                found.setdefault((b.name, b.shape), b)
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else (p,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner, local or eqn.primitive.name == "shard_map")

    walk(getattr(jaxpr, "jaxpr", jaxpr))
    return sorted(found.values(), key=lambda b: -b.bytes)[:limit]


def _buffers_text(buffers: Sequence[Buffer], devices: int) -> str:
    """One line per buffer; an intermediate's global size also as the least a device can hold of it."""

    def share(b: Buffer) -> str:
        return f", ≥ {b.bytes / devices / GIB:,.2f} GiB per device" if b.kind.endswith("(global shape)") else ""

    return "\n".join(
        f"  {b.bytes / GIB:8.2f} GiB  {b.dtype}[{','.join(map(str, b.shape))}]  {b.name}  — {b.kind}{share(b)}"
        for b in buffers
    )


def does_not_fit_message(
    program: str, chip: Chip, need: str, args: tuple, names: Sequence[str], jaxpr: Any, devices: int
) -> str:
    biggest = sorted(argument_buffers(args, names)[:3] + intermediate_buffers(jaxpr), key=lambda b: -b.bytes)
    return (
        f"the {program} does not fit in the {chip.hbm_gib:g} GiB of HBM of a TPU {chip.name} chip: {need}\n"
        f"biggest buffers:\n{_buffers_text(biggest, devices)}\n"
        "knobs that shrink it:\n" + "\n".join(f"  - {k}" for k in KNOBS)
    )


# ----------------------------------------------------------------------------------------------
# Compiling and reporting


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    """What XLA:TPU says of one compiled program, per device (the SPMD-partitioned program)."""

    name: str
    compile_seconds: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs that reuse a donated argument's buffer
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    collectives: dict[str, Collective]
    loops: tuple[int, ...]  # trip counts of the program's while loops (XLA's FLOPs and bytes count one trip)
    tokens: int  # tokens the program processes (all devices): a training batch, or a tick of every session
    model_flops: float  # per device: the model's own FLOPs for those tokens (see `model_flops`)

    def estimate(self, chip: Chip) -> tuple[float, str]:
        """The roofline time on `chip` (`roofline_seconds`) of the larger of XLA's FLOPs and the model's."""
        return roofline_seconds(max(self.flops, self.model_flops), self.bytes_accessed, chip)

    @property
    def hbm_bytes(self) -> int:
        """Peak HBM the program holds: arguments, outputs not aliasing them, temporaries, code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> tuple[float, str]:
    """An estimate of a program's time on `chip`: the larger of compute at peak bf16 FLOP/s and memory
    traffic at peak HBM bandwidth (communication, overlap and launch costs are not modelled)."""
    compute, memory = flops / (chip.bf16_tflops * 1e12), bytes_accessed / (chip.hbm_gbps * 1e9)
    return (compute, "compute") if compute >= memory else (memory, "HBM")


def mfu(model_flops: float, seconds: float, chip: Chip) -> float:
    """Model FLOPs utilisation: the model's FLOPs per device over what the chip's peak does in `seconds`."""
    return model_flops / (seconds * chip.bf16_tflops * 1e12) if seconds > 0 else 0.0


def model_flops(cfg: Config, active_params: int, tokens: int, train: bool) -> float:
    """The model's FLOPs for `tokens` tokens, all devices: 6 N per token training (forward and backward
    over N active parameters) plus PaLM's attention term 12 · layers · heads · head_dim · T (T the
    window); serving 2 N per token (attention over the cache left out: it depends on how full it is)."""
    m = cfg.model
    if not train:
        return 2.0 * active_params * tokens
    window = stream.window_length(cfg.stream, cfg.train.window_chunks)
    return (6.0 * active_params + 12.0 * m.n_layers * m.n_heads * m.head_dim * window) * tokens


def compile_program(name: str, fn: Any, args: tuple, arg_names: Sequence[str], mesh, cfg: Config, chip: Chip):
    """(compiled executable, compile seconds) of `fn` traced on `args` under the mesh and its rules.

    Raises DoesNotFit when XLA:TPU runs out of HBM, with the biggest buffers named."""
    with sharding.mesh_context(mesh, cfg.mesh):
        start = time.perf_counter()
        traced = fn.trace(*args)
        try:
            with compile_check.no_persistent_cache():
                compiled = traced.lower().compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            if "vmem" in str(e).lower():  # on-chip scratch of one fused op or kernel: no HBM knob helps
                lines = str(e).replace("RESOURCE_EXHAUSTED: ", "").strip().splitlines()
                raise DoesNotFit(
                    f"XLA:TPU ran out of VMEM (a TPU core's on-chip vector memory, not HBM) compiling the {name}; "
                    "an op (a fusion or a Mosaic kernel) asks for more scoped VMEM than the core allows:\n  "
                    + "\n  ".join(lines[:12])
                ) from e
            need = str(e).split("\n")[0].replace("RESOURCE_EXHAUSTED: ", "")
            message = does_not_fit_message(name, chip, need, args, arg_names, traced.jaxpr, mesh.size)
            raise DoesNotFit(message) from e
        seconds = time.perf_counter() - start
    return compiled, seconds, traced


def program_report(
    name: str, compiled: Any, seconds: float, tokens: int, model_flops_per_device: float
) -> ProgramReport:
    memory, hlo = compiled.memory_analysis(), compiled.as_text()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    return ProgramReport(
        name=name,
        compile_seconds=seconds,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        collectives=parse_collectives(hlo),
        loops=loop_trips(hlo),
        tokens=tokens,
        model_flops=model_flops_per_device,
    )


# key: (name, builder, what its arguments are called)
PROGRAMS = {
    "train": ("train step", train_program, ("state", "batch")),
    "serve": ("serving tick", serve_program, ("params", "cache", "block", "seeds", "reset", "sampling")),
}


@dataclasses.dataclass(frozen=True)
class CompileReport:
    mesh_name: str
    topology: str
    num_slices: int
    num_devices: int
    chip: Chip
    programs: tuple[ProgramReport, ...]  # the programs that compiled and fit
    does_not_fit: tuple[str, ...] = ()  # a message per program that did not (`does_not_fit_message`)
    setting: str = ""  # the override this report was compiled under (`compare`), "" for none

    def table(self) -> str:
        c = self.chip
        slices = f" × {self.num_slices} slices (DCN)" if self.num_slices > 1 else ""
        head = (
            f"deviceless TPU compile{' with ' + self.setting if self.setting else ''}: mesh {self.mesh_name}, "
            f"topology {self.topology}{slices}, {self.num_devices} TPU {c.name} chips "
            f"({c.hbm_gib:g} GiB HBM, {c.bf16_tflops:g} TFLOP/s bf16, {c.hbm_gbps:,.0f} GB/s each); per device"
        )
        if not self.programs:
            return head + "\nno program fits (see the messages)"
        size = lambda b: f"{b / GIB:,.2f} GiB" if b >= GIB else f"{b / 2**20:,.1f} MiB"
        rows: list[tuple[str, list[str]]] = [
            ("", [p.name for p in self.programs]),
            ("compile time", [f"{p.compile_seconds:,.1f} s" for p in self.programs]),
            ("HBM arguments", [size(p.argument_bytes) for p in self.programs]),
            ("HBM temporaries", [size(p.temp_bytes) for p in self.programs]),
            ("HBM outputs (not aliased)", [size(p.output_bytes - p.alias_bytes) for p in self.programs]),
            ("HBM generated code", [size(p.code_bytes) for p in self.programs]),
            (
                f"HBM total (of {c.hbm_gib:g} GiB)",
                [f"{size(p.hbm_bytes)} ({p.hbm_bytes / (c.hbm_gib * GIB):.0%})" for p in self.programs],
            ),
            ("FLOPs (XLA's count)", [f"{p.flops:.3e}" for p in self.programs]),
            ("model FLOPs", [f"{p.model_flops:.3e}" for p in self.programs]),
            ("bytes accessed (XLA's count)", [f"{p.bytes_accessed:.3e}" for p in self.programs]),
            ("while loops (trips)", [_loops_text(p.loops) for p in self.programs]),
        ]
        for kind in COLLECTIVES:
            rows.append(
                (kind, [f"{p.collectives[kind].count} ({size(p.collectives[kind].bytes)})" for p in self.programs])
            )
        est = [p.estimate(c) for p in self.programs]
        rows += [
            ("tokens (all devices)", [f"{p.tokens:,}" for p in self.programs]),
            ("est. time (roofline)", [f"{s * 1e3:,.2f} ms ({bound}-bound)" for s, bound in est]),
            ("est. MFU", [f"{mfu(p.model_flops, s, c):.1%}" for p, (s, _) in zip(self.programs, est, strict=True)]),
        ]
        width = max(len(k) for k, _ in rows)
        cols = [max(len(r[1][i]) for r in rows) for i in range(len(self.programs))]
        lines = [head] + [
            f"{k:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, cols, strict=True)) for k, vals in rows
        ]
        lines += [
            "ESTIMATES, not measurements: time = max(FLOPs / peak bf16 FLOP/s, bytes accessed / peak HBM bandwidth)",
            "  at the chip's published peaks (FLOPs: the larger of XLA's count and the model's), with no",
            "  communication or overlap modelled; MFU = model FLOPs (training 6 N + attention, serving 2 N per",
            "  token; N active parameters) / (time × peak).",
            "XLA's FLOPs and bytes count each while loop's body once (a scanned layer stack: one layer), so",
            "  with loops they are low and so is the HBM term. Collectives: executions per step (loops counted",
            "  per trip) and bytes of each one's larger buffer, per device, from the optimized HLO (a ragged",
            "  all-to-all: its receive buffer, sized for the worst routing; the rows it moves are fewer).",
        ]
        return "\n".join(lines)


def over_hbm(r: ProgramReport, chip: Chip) -> str | None:
    """Why a compiled program does not fit the chip (its HBM regions summed), or None when it does.

    XLA's own check at compile time (which counts arguments: a 20 GiB argument alone fails it on v5e)
    passed `tml-small-shape` training with 40-chunk windows on v5p while its memory analysis summed to
    105 GiB per 95 GiB chip; which of the two a chip agrees with needs one, so the sum is checked too."""
    if r.hbm_bytes <= chip.hbm_gib * GIB:
        return None
    return (
        f"XLA compiled it, but it holds {r.hbm_bytes / GIB:,.2f} GiB per chip: arguments "
        f"{r.argument_bytes / GIB:,.2f} + temporaries {r.temp_bytes / GIB:,.2f} + outputs not aliased "
        f"{(r.output_bytes - r.alias_bytes) / GIB:,.2f} + code {r.code_bytes / GIB:,.2f} GiB "
        f"(compiled in {r.compile_seconds:,.1f} s)"
    )


def _loops_text(trips: tuple[int, ...]) -> str:
    if not trips:
        return "none"
    shown = ", ".join(map(str, trips[:4])) + (", …" if len(trips) > 4 else "")
    return f"{len(trips)}: {shown}"


def compile_plan(cfg: Config, programs: Sequence[str] = ("train", "serve"), setting: str = "") -> CompileReport:
    """Compile `programs` of `cfg` deviceless for its mesh config's topology and report them; a program
    that needs more HBM than a chip has goes into `does_not_fit` (the others are still compiled).

    Raises LibtpuMissing without libtpu, ConfigError for a mesh that names no topology or does not
    match its chips."""
    from interaction_jax import plan as plan_lib

    devices = topology_devices(cfg.mesh)
    chip = chip_of(cfg.mesh.topology)
    n = len(devices)
    # validates the config against n devices first, for the programs' jobs only (a train step alone is
    # not refused over serve.* keys)
    purpose = programs[0] if set(programs) in ({"train"}, {"serve"}) else "all"
    shapes_plan = plan_lib.make_plan(cfg, n, purpose)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    reports, failures = [], []
    for key in programs:
        if key not in PROGRAMS:
            raise ConfigError("programs", f"unknown program {key!r}", f"use some of {list(PROGRAMS)}")
        name, build, arg_names = PROGRAMS[key]
        fn, args = build(cfg, mesh)
        try:
            compiled, seconds, traced = compile_program(name, fn, args, arg_names, mesh, cfg, chip)
        except DoesNotFit as e:
            failures.append(str(e))
            continue
        train = key == "train"
        s = cfg.stream
        tokens = (
            cfg.train.batch_size * stream.window_length(s, cfg.train.window_chunks)
            if train
            else cfg.serve.max_sessions * stream.chunk_length(s, 0)
        )
        report = program_report(
            name, compiled, seconds, tokens, model_flops(cfg, shapes_plan.active_params, tokens, train) / n
        )
        need = over_hbm(report, chip)
        if need:
            failures.append(does_not_fit_message(name, chip, need, args, arg_names, traced.jaxpr, n))
            continue
        reports.append(report)
    return CompileReport(
        cfg.mesh.name,
        cfg.mesh.topology,
        config_lib.mesh_slices(cfg.mesh),
        n,
        chip,
        tuple(reports),
        tuple(failures),
        setting,
    )


def compare(
    cfg: Config, key: str, values: Sequence[str], programs: Sequence[str] = ("train", "serve")
) -> list[CompileReport]:
    """The same compile under each `key=value` (e.g. model.remat none/block): one report per value."""
    return [
        compile_plan(config_lib.validate(config_lib.override(cfg, [f"{key}={v}"])), programs, f"{key}={v}")
        for v in values
    ]
