"""The configuration tree: frozen dataclasses, presets, YAML files, `a.b=c` overrides, validation.

Everything that shapes a compiled program lives here, so a config fully determines a run. Configs are
immutable: `override(cfg, ["model.d_model=256"])` and `dataclasses.replace` return new trees.
`validate(cfg, num_devices)` runs before anything is traced and names the offending key and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

PATCH_SIZE = 40  # the hMLP stem (k=s 10 → 2 → 2) is built for 40×40 patches
MESH_AXES = ("data", "fsdp", "seq", "tensor", "expert")


class ConfigError(ValueError):
    """A configuration problem, naming the key at fault and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str = ""):
        self.key = key
        message = f"{key}: {problem}"
        if fix:
            message += f" — fix: {fix}"
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """The micro-turn layout and the audio/video front end (DESIGN §4)."""

    chunk_ms: int = 200
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 1024
    win_ms: int = 50
    hop_ms: int = 25
    fmin: float = 80.0
    fmax: float = 7600.0
    dmel_levels: int = 16
    dmel_min: float = -7.0
    dmel_max: float = 2.0
    stack: int = 2  # mel frames per audio token
    text_in_slots: int = 4
    text_out_slots: int = 4
    video: bool = True
    frame_height: int = 80
    frame_width: int = 80
    video_every: int = 5  # one frame every this many chunks (5 × 200 ms = 1 fps)
    # Fixed affine normalisation of log10-mel for the flow head: maps [-7, 2] to about [-2, 2].
    mel_mean: float = -2.5
    mel_std: float = 2.25

    @property
    def audio_slots(self) -> int:
        """AUDIO_IN tokens per chunk, and AUDIO_OUT tokens per chunk."""
        return self.chunk_ms // (self.hop_ms * self.stack)

    @property
    def patch_rows(self) -> int:
        return self.frame_height // PATCH_SIZE

    @property
    def patch_cols(self) -> int:
        return self.frame_width // PATCH_SIZE

    @property
    def patches_per_frame(self) -> int:
        return self.patch_rows * self.patch_cols if self.video else 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The early-fusion MoE decoder and its heads (DESIGN §5)."""

    vocab_size: int = 384
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    n_experts: int = 4
    top_k: int = 2
    expert_mlp: int = 256
    shared_expert_mlp: int = 0  # 0: no shared expert
    dense_every: int = 0  # every n-th layer (n, 2n, …) is a dense SwiGLU instead of MoE; 0: none
    dense_mlp: int = 512
    # gemv / gmm / auto: the pallas_kernels MoE kernels (auto: gemv up to kernels.moe_gemv_max_tokens)
    moe_dispatch: Literal["dense", "ragged", "gather", "gemv", "gmm", "auto"] = "ragged"
    # How the ragged and kernel dispatches reach experts sharded over the mesh's 'exp' axes (DESIGN §7):
    # all_gather (every token to every expert shard, outputs reduce-scattered back) or all_to_all (each
    # (token, slot) sent only to the shard owning its expert with `ragged_all_to_all`, and back; XLA:CPU
    # cannot run that, so CPU meshes emulate it with all-gathers: same results, for tests). Which moves
    # fewer bytes depends on top_k against the expert axis: model/expert_parallel.py.
    expert_parallel: Literal["all_gather", "all_to_all"] = "all_gather"
    normalize_topk: bool = True  # renormalise the k routing weights to sum to one
    # how the dMel table starts: "ordinal" (a channel's levels ordered along one direction; learns the
    # input's cues several times faster, docs/results.md) or "normal" (independent random vectors)
    dmel_init: Literal["ordinal", "normal"] = "ordinal"
    flow_hidden: int = 256
    flow_blocks: int = 2
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay float32
    # Rematerialisation of each block in the backward pass, named after MaxText's `remat_policy`:
    # none (keep every activation), block / full (recompute the whole block: save only its inputs),
    # minimal (save the matmul outputs without batch dimensions: the projections, not attention's
    # scores), save_qkv_proj / save_out_proj / save_dot_except_mlp (save the named projections only).
    remat: Literal["none", "block", "full", "minimal", "save_qkv_proj", "save_out_proj", "save_dot_except_mlp"] = "none"
    # Run the blocks under one `nn.scan` over parameters stacked by layer (one compiled block body, not
    # n_layers copies) with the KV cache stacked by layer too; `transformer.stack_layers` converts an
    # unrolled checkpoint's parameters. With dense_every = n the scan runs over groups of n layers.
    scan_layers: bool = False


@dataclasses.dataclass(frozen=True)
class AxisSizes:
    """Sizes of the mesh axes; -1 means "all the devices left" (at most one axis)."""

    data: int = 1
    fsdp: int = 1
    seq: int = 1
    tensor: int = 1
    expert: int = 1


# (logical name, mesh axes) pairs in priority order; an empty tuple means replicated.
LogicalRules = tuple[tuple[str, tuple[str, ...]], ...]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """A device mesh and the logical-axis rules that map names on tensors onto it (DESIGN §7)."""

    name: str = "cpu-1"
    device_kind: Literal["cpu", "gpu", "tpu"] = "cpu"
    axes: AxisSizes = AxisSizes(data=-1)
    dcn: AxisSizes = AxisSizes()  # multi-slice: how many slices along each axis
    # TPU: one slice's chips as `jax.experimental.topologies` names them ("v5e:4x4", "v5p:4x4x4"), for the
    # deviceless compile of `plan --compile` (the dcn sizes multiply to the number of slices); "": none
    topology: str = ""
    # (logical name, mesh axes) pairs; an empty tuple means replicated.
    rules: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("act_batch", ("data", "fsdp", "expert")),
        ("act_len", ("seq",)),
        ("act_embed", ()),
        ("act_heads", ("tensor",)),
        ("act_kv_heads", ("tensor",)),
        ("act_mlp", ("tensor",)),
        ("act_vocab", ("tensor",)),
        ("cache_batch", ("data", "fsdp", "expert")),
        ("cache_len", ()),
        ("layers", ()),  # the leading layer axis of scanned parameters and of their stacked KV cache
        ("vocab", ("tensor",)),
        ("embed", ("fsdp",)),
        ("heads", ("tensor",)),
        ("kv_heads", ("tensor",)),
        ("head_dim", ()),
        ("mlp", ("tensor",)),
        ("exp", ("expert",)),
        ("exp_mlp", ("tensor",)),
    )

    def rule(self, logical: str) -> tuple[str, ...]:
        for name, mesh_axes in self.rules:
            if name == logical:
                return mesh_axes
        return ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 8
    window_chunks: int = 10
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    pad_weight: float = 0.1  # weight of PAD targets in the text cross-entropy
    # extra weight of the speak-or-stay-silent decision (PAD, SPEAK or DELEGATE targets while the model is
    # silent; stream.text_targets), PAD and the start tokens alike, so the calibration holds
    decision_weight: float = 1.0
    flow_weight: float = 1.0
    load_balance_weight: float = 0.01
    router_z_weight: float = 0.001
    grad_accum: int = 1  # microbatches per step: batch_size rows are split into this many, gradients summed
    log_every: int = 10  # steps between metrics lines
    eval_every: int = 500  # steps between held-out evaluations (and one at the end); 0: never
    eval_episodes: int = 14  # held-out episodes per evaluation (a fixed set: the same every time)
    # free-running held-out episodes per scenario streamed through the serving engine at each evaluation
    # (`eval.probe`; the `train` command and the demo log them as split "behaviour"); 0: none
    behaviour_episodes: int = 1
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end or on SIGTERM)
    keep_checkpoints: int = 3  # the last N are kept


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_sessions: int = 4
    max_len: int = 4096  # KV-cache slots per session (tokens)
    temperature: float = 0.0  # 0: greedy text
    top_p: float = 1.0
    # add log(1 / train.pad_weight) to the PAD logit before sampling, so the sampler sees the calibrated
    # probabilities a PAD-weighted loss skews (model/step.py: pad_logit_bias)
    calibrate_pad: bool = True
    # a TEXT_OUT slot stays silent (PAD) unless the calibrated probability of saying anything exceeds this
    speak_threshold: float = 0.5
    flow_temperature: float = 1.0
    flow_steps: int = 8
    idle_timeout_s: float = 30.0  # a session that sends nothing for this long is closed and its slot freed
    # realtime: the engine ticks every chunk_ms and a chunk that is not in by then is silence;
    # lockstep: it ticks once every open session has sent its next chunk (evaluation, tests)
    clock: Literal["realtime", "lockstep"] = "realtime"
    agent: Literal["tools", "lm", "none"] = "tools"  # the background agent DELEGATE requests go to
    agent_latency_s: float = 0.4  # tools: stream time between the request and its answer
    agent_workdir: str = ""  # lm: the workdir of the checkpoint that answers
    tools_clock: str = "12:00"  # tools: the time of day when a session starts (its clock runs in stream time)
    vocoder_iterations: int = 8  # Griffin-Lim iterations per chunk of the model's voice
    host: str = "127.0.0.1"  # another address needs --auth-token
    port: int = 8765  # 0: any free port
    # Limits on what one client can hold (docs/protocol.md, "Limits"): every one frees what it bounds.
    max_connections: int = 64  # open WebSocket connections (sessions, handshakes, idle sockets) at once
    max_handshakes: int = 16  # connections that have not finished hello → ready yet
    hello_timeout_s: float = 10.0  # a connection that sends no hello this long after connecting is closed
    outbox_messages: int = 64  # replies and notices waiting for one client; beyond: the client is dropped
    send_timeout_s: float = 5.0  # one message the client does not take in this long drops the client
    max_text_backlog: int = 256  # typed-text TEXT_IN tokens waiting per session (4 enter a chunk)
    token_failures: int = 5  # wrong tokens an address may send per token_window_s before it is refused
    token_window_s: float = 60.0
    # Origin headers a browser page may connect with ("http://localhost:3000"); none by default, so no web
    # page can drive the server; clients that send no Origin (Python, curl, native apps) always may.
    allowed_origins: tuple[str, ...] = ()


KernelChoice = Literal["auto", "xla", "reference", "pallas", "interpret"]


@dataclasses.dataclass(frozen=True)
class KernelsConfig:
    """Which kernels the model runs (DESIGN §6, §8; `pallas_kernels/`).

    `alignment: fast` runs XLA's ops; `bitwise` runs the batch-invariant kernels wherever they apply
    (attention, the trunk's matmuls, RMSNorm): compiled on GPU/TPU, interpreted on CPU. Per op, "auto"
    follows the alignment; "xla", "reference", "pallas" or "interpret" picks one explicitly.
    The sizes are fixed here, never derived from the batch.
    """

    alignment: Literal["fast", "bitwise"] = "fast"
    attention: KernelChoice = "auto"
    matmul: KernelChoice = "auto"
    norm: KernelChoice = "auto"
    split_size: int = 512  # KV splits start at absolute multiples of this
    block_kv: int = 128
    tile_m: int = 128
    tile_n: int = 128
    tile_k: int = 128
    moe_block_rows: int = 8  # rows per tile of the MoE kernels (gemv fills one with a token)
    moe_block_k: int = 128  # their weight tiles are moe_block_k square (must divide d_model; expert_mlp need not)
    # auto dispatch: moe_gemv up to this many tokens per call, moe_gmm above (no measured crossover yet)
    moe_gemv_max_tokens: int = 32


# The default mix, every scenario at weight 1. Names only: the scenarios themselves (and the check that a
# name is one, `data.scenarios.check_mix`) live in data/scenarios/, which this module knows nothing of.
DEFAULT_SCENARIOS = ("turn_taking", "backchannel", "interruption", "time_speak", "cue_speak", "rep_count", "delegate")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The synthetic episode mix and its pipeline (DESIGN §9)."""

    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    weights: tuple[float, ...] = (1.0,) * len(DEFAULT_SCENARIOS)  # mixture weights, one per scenario
    episode_chunks: int = 50  # 10 s at 200 ms; windows of train.window_chunks are cut from it
    seed: int = 0  # episode seeds, mixture draws and voice assignment all derive from it
    clip_cache: str = ""  # clip bank folder; "" → $INTERACTION_JAX_CACHE/clips or ~/.cache/interaction-jax/clips
    num_workers: int = 0  # grain worker processes (0: in the main process)
    # Share of training episodes in which the user's camera is off: black frames, nothing visual to react
    # to (scenarios that need the video keep it on). A voice-only client sends no frames and the server
    # shows the model black ones, so training shows them too rather than leaving them out of distribution.
    camera_off: float = 0.2
    # Independent data streams the global batch is cut from (each gives batch_size / shards rows per step);
    # process p of P reads shards [p·shards/P, (p+1)·shards/P). 0: one per process. Fix it to keep the
    # exact data order when a run moves to a different number of hosts.
    shards: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    stream: StreamConfig = StreamConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    kernels: KernelsConfig = KernelsConfig()
    data: DataConfig = DataConfig()


# ----------------------------------------------------------------------------------------------
# Presets


def _preset_tiny() -> Config:
    return Config()


def _preset_small() -> Config:  # one GPU, ~1B parameters in total
    return Config(
        model=ModelConfig(
            d_model=1024,
            n_layers=16,
            n_heads=16,
            n_kv_heads=4,
            head_dim=64,
            n_experts=16,
            top_k=2,
            expert_mlp=1024,
            shared_expert_mlp=1024,
            flow_hidden=1024,
            flow_blocks=3,
            dtype="bfloat16",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=160, frame_width=160),
        mesh=MeshConfig(name="gpu-1", device_kind="gpu"),
        train=TrainConfig(batch_size=16, window_chunks=50, learning_rate=6e-4),
        serve=ServeConfig(max_sessions=32, max_len=16384),
    )


def _preset_base() -> Config:  # 8 GPUs or a small TPU slice
    return Config(
        model=ModelConfig(
            d_model=2048,
            n_layers=24,
            n_heads=32,
            n_kv_heads=8,
            head_dim=64,
            n_experts=32,
            top_k=4,
            expert_mlp=1408,
            shared_expert_mlp=2816,
            flow_hidden=2048,
            flow_blocks=4,
            dtype="bfloat16",
            remat="block",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=240, frame_width=320),
        mesh=MeshConfig(name="gpu-8", device_kind="gpu"),
        train=TrainConfig(batch_size=64, window_chunks=100, learning_rate=3e-4),
        serve=ServeConfig(max_sessions=64, max_len=32768),
    )


def _preset_tml_small_shape() -> Config:  # 276B total / ~12B active: for planning, not training
    return Config(
        model=ModelConfig(
            d_model=5120,
            n_layers=48,
            n_heads=40,
            n_kv_heads=8,
            head_dim=128,
            n_experts=256,
            top_k=8,
            expert_mlp=1440,
            shared_expert_mlp=0,
            flow_hidden=4096,
            flow_blocks=4,
            dtype="bfloat16",
            remat="block",
            scan_layers=True,
        ),
        stream=StreamConfig(frame_height=360, frame_width=640),
        mesh=MeshConfig(name="tpu-v5p-128", device_kind="tpu"),
        train=TrainConfig(batch_size=256, window_chunks=150, learning_rate=1.5e-4),
        serve=ServeConfig(max_sessions=128, max_len=65536),
    )


PRESETS = {
    "tiny": _preset_tiny,
    "small": _preset_small,
    "base": _preset_base,
    "tml-small-shape": _preset_tml_small_shape,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}", f"use one of {sorted(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# Dicts, YAML and overrides


def to_dict(cfg: Any) -> Any:
    """The config as plain dicts/lists/scalars (YAML-ready); rules become a mapping of all of them (loaded
    back, they merge by name onto the defaults, so rules that came from such merges come back the same)."""
    if isinstance(cfg, MeshConfig):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        out["rules"] = {name: list(axes) for name, axes in cfg.rules}
        return out
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type `hint` and convert lists to tuples; raise ConfigError."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}", "give the sub-keys as a mapping")
        return _from_dict(hint, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(key, f"{value!r} is not one of {list(choices)}", f"use one of {list(choices)}")
        return value
    if origin in (tuple,):
        args = typing.get_args(hint)
        if key.endswith("rules") and isinstance(value, dict):
            value = [[name, axes] for name, axes in value.items()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}", "give a YAML list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} items, got {len(value)}", "")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} does not match {hint}", "")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true/false, got {value!r}", f"write {key}=true or {key}=false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}", f"write {key}=<integer>")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 leaves "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}", f"write {key}=<number>")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}", "")
        return value
    if value is None and hint is type(None):
        return None
    raise ConfigError(key, f"cannot check a value against {hint}", "")


def _unknown_key(prefix: str, name: str, known: list[str]) -> ConfigError:
    key = f"{prefix}{name}"
    close = difflib.get_close_matches(name, known, n=1)
    fix = f"did you mean {prefix}{close[0]}?" if close else f"known keys here: {', '.join(known)}"
    return ConfigError(key, "unknown key", fix)


def _from_dict(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from `data`, starting from `base` (or the class defaults)."""
    hints = _field_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    base = base if base is not None else cls()
    updates = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown_key(f"{prefix}." if prefix else "", name, known)
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            updates[name] = _from_dict(hint, value, key, getattr(base, name))
        elif cls is MeshConfig and name == "rules":
            if not isinstance(value, dict):
                raise ConfigError(
                    key,
                    f"expected a mapping, got {value!r}",
                    "give the rules that change as {logical name: [mesh axes]}",
                )
            updates[name] = merge_rules(base.rules, _coerce(key, value, hint))
        else:
            updates[name] = _coerce(key, value, hint)
    return dataclasses.replace(base, **updates)


def merge_rules(base: LogicalRules, changes: LogicalRules) -> LogicalRules:
    """`base`'s logical-axis rules with `changes` applied by logical name: a name `base` has keeps its place
    (the priority order) and takes the new mesh axes (`[]`: replicated); a new name is appended, in the
    order `changes` gives it. No rule is removed."""
    changed = dict(changes)
    merged = tuple((name, changed.pop(name, axes)) for name, axes in base)
    return merged + tuple(changed.items())


def from_dict(data: dict, base: Config | None = None) -> Config:
    return _from_dict(Config, data or {}, "", base if base is not None else Config())


def load_yaml(path: str | Path, base: Config | None = None) -> Config:
    """A config from a YAML file of (partial) keys, applied on top of `base` (a preset)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if "preset" in data:
        base = preset(data.pop("preset"))
    return from_dict(data, base)


def load_mesh(path: str | Path) -> MeshConfig:
    """A mesh config from one of the `mesh_configs/*.yaml` files: its name, device kind, axes (and dcn,
    topology), on top of `MeshConfig`'s defaults.

    The logical-axis rules live in one place, `MeshConfig.rules`. A file states only the rules it changes,
    as a `rules:` mapping {logical name: [mesh axes]} merged by name (`merge_rules`): a default rule named
    there keeps its place in the priority order and takes the file's axes (`[]` replicates); a name the
    defaults lack is appended after them, in the file's order; every other default stands. The same merge
    applies to `mesh.rules` in a config YAML and to `--set mesh.rules.<name>=[...]`.
    """
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return _from_dict(MeshConfig, data, "mesh", MeshConfig())


def override(cfg: Config, assignments: list[str]) -> Config:
    """Apply `a.b=c` assignments; values are parsed as YAML scalars and type-checked."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(assignment, "an override must look like a.b=c", f"write {assignment}=<value>")
        key, raw = assignment.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.1 reads yes/no/on/off as booleans; we want explicit true/false
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = from_dict(nested, cfg)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Validation


def mesh_device_count(mesh: MeshConfig, num_devices: int | None = None) -> tuple[int, bool]:
    """(devices, fixed): how many devices a mesh config runs on, and whether that count is settled.

    The one place the count is worked out (plan, sweep, the pod commands and `plan --compile` ask here).
    `num_devices` (the caller's own count) settles it when given. Else the axis sizes × dcn do, unless an
    axis is -1: then the count is the fewest devices the mesh allows (any multiple fits), not settled, and
    the caller decides (the devices it sees, or the pod's hosts). Pure arithmetic on the config, so it
    lives here rather than in `sharding.py`: `validate` resolves the mesh against a count, `sharding`
    imports this module, and the sweep and pod commands use it without loading JAX.
    """
    if num_devices:
        return num_devices, True
    open_axis = any(getattr(mesh.axes, a) == -1 for a in MESH_AXES)
    return math.prod(abs(getattr(mesh.axes, a)) * getattr(mesh.dcn, a) for a in MESH_AXES), not open_axis


def mesh_slices(mesh: MeshConfig) -> int:
    """How many slices (ICI domains joined over DCN) a mesh config spans: the product of its dcn sizes."""
    return math.prod(getattr(mesh.dcn, a) for a in MESH_AXES)


def resolve_axis_sizes(mesh: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes with -1 resolved against the device count (dcn sizes multiplied in)."""
    sizes = {a: getattr(mesh.axes, a) * getattr(mesh.dcn, a) for a in MESH_AXES}
    for a in MESH_AXES:
        if getattr(mesh.axes, a) == 0 or getattr(mesh.axes, a) < -1:
            raise ConfigError(f"mesh.axes.{a}", f"size {getattr(mesh.axes, a)} is invalid", "use a positive size or -1")
        if getattr(mesh.dcn, a) < 1:
            raise ConfigError(f"mesh.dcn.{a}", f"size {getattr(mesh.dcn, a)} is invalid", "use a positive size")
    rest = [a for a in MESH_AXES if getattr(mesh.axes, a) == -1]
    if len(rest) > 1:
        raise ConfigError(f"mesh.axes.{rest[1]}", "only one axis may be -1", "give the others explicit sizes")
    fixed = math.prod(abs(s) for a, s in sizes.items() if a not in rest)
    if rest:
        a = rest[0]
        dcn = getattr(mesh.dcn, a)
        if num_devices % (fixed * dcn):
            raise ConfigError(
                f"mesh.axes.{a}",
                f"{num_devices} devices do not split into the fixed axes ({fixed}) × dcn ({dcn})",
                "change the explicit axis sizes so they divide the device count",
            )
        sizes[a] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        given = " × ".join(f"{a} {s}" for a, s in sizes.items() if s != 1) or "1"
        raise ConfigError(
            "mesh.axes",
            f"the axes multiply to {total} ({given}) but there are {num_devices} devices",
            f"make the sizes multiply to {num_devices}, or set one axis to -1, or pick another mesh config",
        )
    return sizes


def _mesh_size(sizes: dict[str, int], axes: tuple[str, ...]) -> int:
    return math.prod(sizes[a] for a in axes)


# Numeric fields that may be 0 (off / none), and the ones that may be any sign; all others must be > 0.
_MAY_BE_ZERO = frozenset(
    {
        "shared_expert_mlp",
        "dense_every",
        "warmup_steps",
        "weight_decay",
        "temperature",
        "pad_weight",
        "flow_weight",
        "load_balance_weight",
        "router_z_weight",
        "seed",
        "grad_clip",
        "fmin",
        "min_lr_ratio",
        "mel_mean",
        "num_workers",
        "camera_off",
        "eval_every",
        "behaviour_episodes",
        "shards",
        "agent_latency_s",
        "port",
    }
)
_MAY_BE_NEGATIVE = frozenset({"dmel_min", "mel_mean"})


# The serve.* keys training reads: the sampling of the behaviour probe (`train.behaviour_episodes`
# streams held-out episodes through a one-session engine of its own, `model.step.Sampling.from_config`).
# The other serve.* keys (the server's address, limits, sessions, KV cache, agent, clock) only the
# server reads, so a training config is not refused over them (validate's purpose="train").
TRAINING_SERVE_KEYS = frozenset(
    {"temperature", "top_p", "calibrate_pad", "speak_threshold", "flow_temperature", "flow_steps"}
)


def _validate_server(sv: ServeConfig) -> None:
    """The checks of the serve.* keys only the server reads."""
    if sv.agent == "lm" and not sv.agent_workdir:
        raise ConfigError(
            "serve.agent_workdir", "the lm agent needs a checkpoint to answer with", "set it to a workdir"
        )
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", sv.tools_clock):
        raise ConfigError(
            "serve.tools_clock", f"{sv.tools_clock!r} is not a time of day", "write it as H:MM, e.g. 9:30"
        )
    if sv.port > 65535:
        raise ConfigError("serve.port", f"{sv.port} is not a TCP port", "use 0 (any free port) to 65535")
    if sv.max_handshakes > sv.max_connections:
        raise ConfigError(
            "serve.max_handshakes",
            f"{sv.max_handshakes} handshakes cannot be in flight on {sv.max_connections} connections",
            "set serve.max_handshakes <= serve.max_connections",
        )
    for origin in sv.allowed_origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                "serve.allowed_origins",
                f"{origin!r} is not an origin (a browser sends scheme://host[:port], nothing after)",
                "write it as e.g. http://localhost:3000",
            )


def validate(cfg: Config, num_devices: int | None = None, purpose: Literal["all", "train", "serve"] = "all") -> Config:
    """Raise ConfigError for the first problem found; return cfg unchanged when it is sound.

    With `num_devices`, mesh-dependent checks run too (divisibility of heads, experts, vocab, batch).
    `purpose` checks only what that job reads: "train" leaves out the serve.* keys other than the
    sampling ones (`TRAINING_SERVE_KEYS`: the server's address, limits, sessions, cache and agent are
    never read by training), "serve" the training batch's divisibility; "all" checks everything.
    What the scenarios in `data.scenarios` need (known names, episode length, video) is checked by
    `data.scenarios.check_mix`, which knows them.
    """
    for section in ("model", "stream", "train", "serve", "data"):
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            if purpose == "train" and section == "serve" and f.name not in TRAINING_SERVE_KEYS:
                continue
            value = getattr(sub, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if f.name in _MAY_BE_NEGATIVE:
                    continue
                if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                    raise ConfigError(f"{section}.{f.name}", f"must be positive, got {value}", "use a value > 0")
    m, s, t = cfg.model, cfg.stream, cfg.train
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(
            "model.n_kv_heads",
            f"{m.n_heads} heads do not group into {m.n_kv_heads} kv heads",
            "choose n_kv_heads dividing n_heads",
        )
    if m.head_dim % 2:
        raise ConfigError("model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}", "use an even size")
    if m.expert_parallel not in ("all_gather", "all_to_all"):
        raise ConfigError("model.expert_parallel", f"unknown {m.expert_parallel!r}", "use all_gather or all_to_all")
    if m.top_k > m.n_experts:
        raise ConfigError("model.top_k", f"top_k {m.top_k} exceeds n_experts {m.n_experts}", "set top_k <= n_experts")
    from interaction_jax import tokenizer  # local: tokenizer imports nothing from here at module level

    if m.vocab_size % 128 or m.vocab_size < tokenizer.NUM_IDS:
        raise ConfigError(
            "model.vocab_size",
            f"{m.vocab_size} must be a multiple of 128 and hold the {tokenizer.NUM_IDS} tokenizer ids",
            "use 384",
        )
    if s.chunk_ms % (s.hop_ms * s.stack):
        raise ConfigError(
            "stream.chunk_ms",
            f"{s.chunk_ms} ms is not a multiple of hop_ms × stack = {s.hop_ms * s.stack} ms",
            "pick chunk_ms as a multiple of hop_ms × stack",
        )
    if s.win_ms * s.sample_rate // 1000 > s.n_fft:
        raise ConfigError("stream.n_fft", f"the {s.win_ms} ms window does not fit n_fft {s.n_fft}", "raise n_fft")
    for name in ("frame_height", "frame_width"):
        if getattr(s, name) % PATCH_SIZE:
            raise ConfigError(
                f"stream.{name}",
                f"{getattr(s, name)} is not a multiple of the {PATCH_SIZE}-pixel patch",
                f"use a multiple of {PATCH_SIZE}",
            )
    if s.dmel_min >= s.dmel_max:
        raise ConfigError("stream.dmel_max", "must exceed stream.dmel_min", "")
    if s.fmax > s.sample_rate / 2 or s.fmin >= s.fmax:
        raise ConfigError("stream.fmax", f"need fmin < fmax <= sample_rate/2, got {s.fmin}, {s.fmax}", "")
    if s.video and t.window_chunks % s.video_every:
        raise ConfigError(
            "train.window_chunks",
            f"{t.window_chunks} chunks is not a multiple of "
            f"stream.video_every={s.video_every}, so windows would differ in length",
            "use a multiple of video_every",
        )
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            "train.grad_accum",
            f"batch_size {t.batch_size} does not split into {t.grad_accum} microbatches",
            "use a grad_accum that divides train.batch_size",
        )
    d = cfg.data
    if d.shards and t.batch_size % d.shards:
        raise ConfigError(
            "data.shards", f"batch_size {t.batch_size} does not split over {d.shards} data shards", "use a divisor"
        )
    if len(d.weights) != len(d.scenarios) or not d.scenarios:
        raise ConfigError(
            "data.weights",
            f"{len(d.weights)} weights for {len(d.scenarios)} scenarios",
            "give one weight per entry of data.scenarios",
        )
    if any(w < 0 for w in d.weights) or sum(d.weights) <= 0:
        raise ConfigError("data.weights", f"weights must be >= 0 with a positive sum, got {list(d.weights)}", "")
    if d.camera_off > 1:
        raise ConfigError("data.camera_off", f"{d.camera_off} is not a share of episodes", "use a value in [0, 1]")
    kc = cfg.kernels
    if kc.split_size % kc.block_kv:
        raise ConfigError(
            "kernels.split_size", f"{kc.split_size} is not a multiple of kernels.block_kv ({kc.block_kv})", "fix either"
        )
    # The MoE kernels run past an expert width that is not a multiple of the tile and mask what they read
    # there (tml-small-shape's 1440); the model width they do not pad.
    if m.moe_dispatch in ("gemv", "gmm", "auto") and m.d_model % kc.moe_block_k:
        raise ConfigError(
            "kernels.moe_block_k",
            f"{kc.moe_block_k} does not divide model.d_model ({m.d_model})",
            "use a divisor of model.d_model",
        )
    for op in ("attention", "matmul", "norm"):
        if kc.alignment == "bitwise" and getattr(kc, op) == "xla":
            raise ConfigError(
                f"kernels.{op}",
                "alignment bitwise needs the batch-invariant kernels, not XLA's",
                f"set kernels.{op}=auto",
            )
    if purpose != "train":
        _validate_server(cfg.serve)
    if cfg.mesh.device_kind not in ("cpu", "gpu", "tpu"):
        raise ConfigError("mesh.device_kind", f"unknown kind {cfg.mesh.device_kind!r}", "use cpu, gpu or tpu")
    if not 0.0 < cfg.serve.speak_threshold < 1.0:
        raise ConfigError(
            "serve.speak_threshold",
            f"{cfg.serve.speak_threshold} is not a probability strictly between 0 and 1",
            "use 0.5 (speak when that is more likely than not), or lower to speak more readily",
        )
    if cfg.serve.calibrate_pad and t.pad_weight == 0:
        raise ConfigError(
            "serve.calibrate_pad",
            "the PAD logit cannot be calibrated for train.pad_weight 0 (the model never learned when to be silent)",
            "give train.pad_weight a value > 0, or set serve.calibrate_pad=false",
        )
    known_axes = set(MESH_AXES)
    for name, axes in cfg.mesh.rules:
        for a in axes:
            if a not in known_axes:
                raise ConfigError(f"mesh.rules.{name}", f"unknown mesh axis {a!r}", f"use axes of {MESH_AXES}")
    if num_devices is not None:
        sizes = resolve_axis_sizes(cfg.mesh, num_devices)
        checks = [
            ("heads", m.n_heads, "model.n_heads"),
            ("kv_heads", m.n_kv_heads, "model.n_kv_heads"),
            ("exp", m.n_experts, "model.n_experts"),
            ("vocab", m.vocab_size, "model.vocab_size"),
            ("embed", m.d_model, "model.d_model"),
            ("mlp", m.dense_mlp, "model.dense_mlp"),
            ("exp_mlp", m.expert_mlp, "model.expert_mlp"),
        ]
        if purpose != "serve":
            checks.append(("act_batch", t.batch_size, "train.batch_size"))
        if purpose != "train":
            checks.append(("cache_batch", cfg.serve.max_sessions, "serve.max_sessions"))
        for logical, value, key in checks:
            axes = cfg.mesh.rule(logical)
            n = _mesh_size(sizes, axes)
            if value % n:
                raise ConfigError(
                    key,
                    f"{value} is not divisible by the {n} devices of mesh axes {list(axes)} "
                    f"that logical axis '{logical}' is sharded over (mesh {cfg.mesh.name})",
                    f"make {key} a multiple of {n}, or change the mesh",
                )
    return cfg
