"""The configuration tree: frozen dataclasses, one per section, each with the checks of its own fields.

A numeric field's bound stands beside it: every number must be > 0 unless its field says otherwise
(`setting(0, lower="zero")`: 0 means off or none; `lower="none"`: any sign), and `check_bounds` reads
that. The rest of a section's checks are its `check` method. Checks that need two sections (the window
against the video rate, the batch against the data shards) or the device count (the batch against the
mesh) live in `checks.py`, whose `validate` runs them all.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

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


Lower = Literal["positive", "zero", "none"]


def setting(default: Any, *, lower: Lower = "positive", training: bool = False) -> Any:
    """A field whose check is declared with it.

    `lower` is a number's lower bound (`check_bounds`): "positive" (> 0, what a plain numeric field gets),
    "zero" (>= 0: 0 means off or none) or "none" (any sign). `training` marks a serve.* key that training
    reads too (`TRAINING_SERVE_KEYS`).
    """
    return dataclasses.field(default=default, metadata={"lower": lower, "training": training})


def check_bounds(section: Any, prefix: str, names: frozenset[str] | None = None) -> None:
    """Every number in `section` (those in `names`, when given) within the lower bound its field declares."""
    for f in dataclasses.fields(section):
        if names is not None and f.name not in names:
            continue
        value = getattr(section, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lower = f.metadata.get("lower", "positive")
        if lower == "none":
            continue
        if value < 0 or (value == 0 and lower == "positive"):
            raise ConfigError(f"{prefix}.{f.name}", f"must be positive, got {value}", "use a value > 0")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """The micro-turn layout and the audio/video front end (DESIGN §4)."""

    chunk_ms: int = 200
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 1024
    win_ms: int = 50
    hop_ms: int = 25
    fmin: float = setting(80.0, lower="zero")
    fmax: float = 7600.0
    dmel_levels: int = 16
    dmel_min: float = setting(-7.0, lower="none")
    dmel_max: float = 2.0
    stack: int = 2  # mel frames per audio token
    text_in_slots: int = 4
    text_out_slots: int = 4
    video: bool = True
    frame_height: int = 80
    frame_width: int = 80
    video_every: int = 5  # one frame every this many chunks (5 × 200 ms = 1 fps)
    # Fixed affine normalisation of log10-mel for the flow head: maps [-7, 2] to about [-2, 2].
    mel_mean: float = setting(-2.5, lower="none")
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

    def check(self) -> None:
        check_bounds(self, "stream")
        if self.chunk_ms % (self.hop_ms * self.stack):
            raise ConfigError(
                "stream.chunk_ms",
                f"{self.chunk_ms} ms is not a multiple of hop_ms × stack = {self.hop_ms * self.stack} ms",
                "pick chunk_ms as a multiple of hop_ms × stack",
            )
        if self.win_ms * self.sample_rate // 1000 > self.n_fft:
            raise ConfigError(
                "stream.n_fft", f"the {self.win_ms} ms window does not fit n_fft {self.n_fft}", "raise n_fft"
            )
        for name in ("frame_height", "frame_width"):
            if getattr(self, name) % PATCH_SIZE:
                raise ConfigError(
                    f"stream.{name}",
                    f"{getattr(self, name)} is not a multiple of the {PATCH_SIZE}-pixel patch",
                    f"use a multiple of {PATCH_SIZE}",
                )
        if self.dmel_min >= self.dmel_max:
            raise ConfigError("stream.dmel_max", "must exceed stream.dmel_min", "")
        if self.fmax > self.sample_rate / 2 or self.fmin >= self.fmax:
            raise ConfigError("stream.fmax", f"need fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}", "")


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
    shared_expert_mlp: int = setting(0, lower="zero")  # 0: no shared expert
    # every n-th layer (n, 2n, …) is a dense SwiGLU instead of MoE; 0: none
    dense_every: int = setting(0, lower="zero")
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
    # Whether an AUDIO_OUT token carries its dMel into the model (it hears its own voice) or only its
    # kind. Teacher forcing feeds the data's clean voice there, which gives the word being said away (a
    # demo model predicts 85% of its next text bytes, 26% with that voice silenced), while served it hears
    # its own flow output. Off, training and serving see the same thing and the model knows what it says
    # from its TEXT_OUT tokens alone (docs/data.md; three demo seeds in docs/results.md). A checkpoint
    # saved before this key existed heard its own voice (`train.checkpoint.as_trained`).
    hear_own_voice: bool = False
    flow_hidden: int = 256
    flow_blocks: int = 2
    # voice-activity projection (Ekstedt & Skantze's VAP): a head reading each chunk's decision state and
    # predicting the share of each of the next `vap_horizon` chunks the user speaks; 0: no head.
    # Training weighs its loss by train.vap_weight; serving never runs it.
    vap_horizon: int = setting(0, lower="zero")
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

    def check(self) -> None:
        check_bounds(self, "model")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                "model.n_kv_heads",
                f"{self.n_heads} heads do not group into {self.n_kv_heads} kv heads",
                "choose n_kv_heads dividing n_heads",
            )
        if self.head_dim % 2:
            raise ConfigError("model.head_dim", f"RoPE needs an even head_dim, got {self.head_dim}", "use an even size")
        if self.expert_parallel not in ("all_gather", "all_to_all"):
            raise ConfigError(
                "model.expert_parallel", f"unknown {self.expert_parallel!r}", "use all_gather or all_to_all"
            )
        if self.top_k > self.n_experts:
            raise ConfigError(
                "model.top_k", f"top_k {self.top_k} exceeds n_experts {self.n_experts}", "set top_k <= n_experts"
            )
        from interaction_jax import tokenizer  # local: tokenizer imports nothing from here at module level

        if self.vocab_size % 128 or self.vocab_size < tokenizer.NUM_IDS:
            raise ConfigError(
                "model.vocab_size",
                f"{self.vocab_size} must be a multiple of 128 and hold the {tokenizer.NUM_IDS} tokenizer ids",
                "use 384",
            )


@dataclasses.dataclass(frozen=True)
class AxisSizes:
    """Sizes of the mesh axes; -1 means "all the devices left" (at most one axis).

    Their checks need the device count: `mesh.resolve_axis_sizes`.
    """

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

    def check_rules(self) -> None:
        """Every rule maps onto the mesh's own axes (`sharding.axis_rules` asks this too)."""
        for name, axes in self.rules:
            for a in axes:
                if a not in MESH_AXES:
                    raise ConfigError(f"mesh.rules.{name}", f"unknown mesh axis {a!r}", f"use axes of {MESH_AXES}")

    def check(self) -> None:
        """The checks that need no device count (with one: `checks.check_on_devices`)."""
        if self.device_kind not in ("cpu", "gpu", "tpu"):
            raise ConfigError("mesh.device_kind", f"unknown kind {self.device_kind!r}", "use cpu, gpu or tpu")
        self.check_rules()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = setting(0, lower="zero")
    steps: int = 2000
    batch_size: int = 8
    window_chunks: int = 10
    learning_rate: float = 3e-3
    warmup_steps: int = setting(100, lower="zero")
    min_lr_ratio: float = setting(0.1, lower="zero")
    weight_decay: float = setting(0.01, lower="zero")
    grad_clip: float = setting(1.0, lower="zero")
    pad_weight: float = setting(0.1, lower="zero")  # weight of PAD targets in the text cross-entropy
    # extra weight of the speak-or-stay-silent decision (PAD, SPEAK or DELEGATE targets while the model is
    # silent; stream.text_targets), PAD and the start tokens alike, so the calibration holds
    decision_weight: float = 1.0
    # weight of the voice-activity projection loss (model.vap_horizon chunks ahead; train/vap.py); 0: off
    vap_weight: float = setting(0.0, lower="zero")
    flow_weight: float = setting(1.0, lower="zero")
    load_balance_weight: float = setting(0.01, lower="zero")
    router_z_weight: float = setting(0.001, lower="zero")
    # decay of an exponential moving average of the parameters kept beside them (TrainState.ema_params):
    # evaluation, the behaviour probe and every checkpoint reader (`checkpoint.load_params`) use the
    # average, training the raw parameters; 0: none kept
    ema_decay: float = setting(0.0, lower="zero")
    grad_accum: int = 1  # microbatches per step: batch_size rows are split into this many, gradients summed
    log_every: int = 10  # steps between metrics lines
    # steps between held-out evaluations (and one at the end); 0: never
    eval_every: int = setting(500, lower="zero")
    eval_episodes: int = 14  # held-out episodes per evaluation (a fixed set: the same every time)
    # free-running held-out episodes per scenario streamed through the serving engine at each evaluation
    # (`eval.probe`; the `train` command and the demo log them as split "behaviour"); 0: none
    behaviour_episodes: int = setting(1, lower="zero")
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end or on SIGTERM)
    keep_checkpoints: int = 3  # the last N are kept

    def check(self) -> None:
        check_bounds(self, "train")
        if self.ema_decay >= 1.0:
            raise ConfigError(
                "train.ema_decay",
                f"{self.ema_decay} would never move the average from the initial parameters",
                "use a decay in [0, 1): 0.99 averages over about the last 100 steps, 0 keeps no average",
            )
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                "train.grad_accum",
                f"batch_size {self.batch_size} does not split into {self.grad_accum} microbatches",
                "use a grad_accum that divides train.batch_size",
            )


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """The server. Keys marked `training=True` are the sampling of the behaviour probe, which training
    reads too (`TRAINING_SERVE_KEYS`); the others (address, limits, sessions, KV cache, agent, clock) only
    the server reads, so a training config is not refused over them (validate's purpose="train")."""

    max_sessions: int = 4
    max_len: int = 4096  # KV-cache slots per session (tokens)
    temperature: float = setting(0.0, lower="zero", training=True)  # 0: greedy text
    top_p: float = setting(1.0, training=True)
    # add log(1 / train.pad_weight) to the PAD logit before sampling, so the sampler sees the calibrated
    # probabilities a PAD-weighted loss skews (model/step.py: pad_logit_bias)
    calibrate_pad: bool = setting(True, training=True)
    # a TEXT_OUT slot stays silent (PAD) unless the calibrated probability of saying anything exceeds this
    speak_threshold: float = setting(0.5, training=True)
    flow_temperature: float = setting(1.0, training=True)
    flow_steps: int = setting(8, training=True)
    idle_timeout_s: float = 30.0  # a session that sends nothing for this long is closed and its slot freed
    # realtime: the engine ticks every chunk_ms and a chunk that is not in by then is silence;
    # lockstep: it ticks once every open session has sent its next chunk (evaluation, tests)
    clock: Literal["realtime", "lockstep"] = "realtime"
    agent: Literal["tools", "lm", "none"] = "tools"  # the background agent DELEGATE requests go to
    # tools: stream time between the request and its answer
    agent_latency_s: float = setting(0.4, lower="zero")
    agent_workdir: str = ""  # lm: the workdir of the checkpoint that answers
    tools_clock: str = "12:00"  # tools: the time of day when a session starts (its clock runs in stream time)
    vocoder_iterations: int = 8  # Griffin-Lim iterations per chunk of the model's voice
    host: str = "127.0.0.1"  # another address needs --auth-token
    port: int = setting(8765, lower="zero")  # 0: any free port
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

    def check(self, server: bool = True) -> None:
        """The training keys' checks, and with `server` those of the keys only the server reads."""
        check_bounds(self, "serve", None if server else TRAINING_SERVE_KEYS)
        if server:
            self._check_server()
        if not 0.0 < self.speak_threshold < 1.0:
            raise ConfigError(
                "serve.speak_threshold",
                f"{self.speak_threshold} is not a probability strictly between 0 and 1",
                "use 0.5 (speak when that is more likely than not), or lower to speak more readily",
            )

    def _check_server(self) -> None:
        if self.agent == "lm" and not self.agent_workdir:
            raise ConfigError(
                "serve.agent_workdir", "the lm agent needs a checkpoint to answer with", "set it to a workdir"
            )
        if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", self.tools_clock):
            raise ConfigError(
                "serve.tools_clock", f"{self.tools_clock!r} is not a time of day", "write it as H:MM, e.g. 9:30"
            )
        if self.port > 65535:
            raise ConfigError("serve.port", f"{self.port} is not a TCP port", "use 0 (any free port) to 65535")
        if self.max_handshakes > self.max_connections:
            raise ConfigError(
                "serve.max_handshakes",
                f"{self.max_handshakes} handshakes cannot be in flight on {self.max_connections} connections",
                "set serve.max_handshakes <= serve.max_connections",
            )
        for origin in self.allowed_origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ConfigError(
                    "serve.allowed_origins",
                    f"{origin!r} is not an origin (a browser sends scheme://host[:port], nothing after)",
                    "write it as e.g. http://localhost:3000",
                )


# The serve.* keys training reads: the sampling of the behaviour probe (`train.behaviour_episodes`
# streams held-out episodes through a one-session engine of its own, `model.step.Sampling.from_config`).
TRAINING_SERVE_KEYS = frozenset(f.name for f in dataclasses.fields(ServeConfig) if f.metadata.get("training"))


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
    # XLA attention over a whole training window (from an empty cache) runs in blocks of this many queries,
    # each against only the keys up to its own end, so the scores above the diagonal's blocks are never
    # computed (the train step 1.4x faster on CPU at 840 tokens, docs/results.md). Serving calls are never
    # split; the kernels skip those scores their own way. 0: one block.
    window_block: int = setting(128, lower="zero")
    split_size: int = 512  # KV splits start at absolute multiples of this
    block_kv: int = 128
    tile_m: int = 128
    tile_n: int = 128
    tile_k: int = 128
    moe_block_rows: int = 8  # rows per tile of the MoE kernels (gemv fills one with a token)
    moe_block_k: int = 128  # their weight tiles are moe_block_k square (must divide d_model; expert_mlp need not)
    # auto dispatch: moe_gemv up to this many tokens per call, moe_gmm above (no measured crossover yet)
    moe_gemv_max_tokens: int = setting(32, lower="zero")  # 0: always moe_gmm

    def check(self) -> None:
        """Every size positive (`window_block` may be 0), how the sizes fit together, and the alignment
        against the ops."""
        check_bounds(self, "kernels")
        if self.split_size % self.block_kv:
            raise ConfigError(
                "kernels.split_size",
                f"{self.split_size} is not a multiple of kernels.block_kv ({self.block_kv})",
                "fix either",
            )
        for op in ("attention", "matmul", "norm"):
            if self.alignment == "bitwise" and getattr(self, op) == "xla":
                raise ConfigError(
                    f"kernels.{op}",
                    "alignment bitwise needs the batch-invariant kernels, not XLA's",
                    f"set kernels.{op}=auto",
                )


# The default mix, every scenario at weight 1. Names only: the scenarios themselves (and the check that a
# name is one, `data.scenarios.check_mix`) live in data/scenarios/, which this package knows nothing of.
DEFAULT_SCENARIOS = ("turn_taking", "backchannel", "interruption", "time_speak", "cue_speak", "rep_count", "delegate")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The synthetic episode mix and its pipeline (DESIGN §9)."""

    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    weights: tuple[float, ...] = (1.0,) * len(DEFAULT_SCENARIOS)  # mixture weights, one per scenario
    episode_chunks: int = 50  # 10 s at 200 ms; windows of train.window_chunks are cut from it
    seed: int = setting(0, lower="zero")  # episode seeds, mixture draws and voice assignment all derive from it
    clip_cache: str = ""  # clip bank folder; "" → $INTERACTION_JAX_CACHE/clips or ~/.cache/interaction-jax/clips
    num_workers: int = setting(0, lower="zero")  # grain worker processes (0: in the main process)
    # Batches' worth of episodes each data shard makes ahead of the trainer, in threads (one per core at
    # most). More only keeps cores busy on episodes the trainer has not reached.
    read_ahead: int = 2
    # Share of training episodes in which the user's camera is off: black frames, nothing visual to react
    # to (scenarios that need the video keep it on). A voice-only client sends no frames and the server
    # shows the model black ones, so training shows them too rather than leaving them out of distribution.
    camera_off: float = setting(0.2, lower="zero")
    # Independent data streams the global batch is cut from (each gives batch_size / shards rows per step);
    # process p of P reads shards [p·shards/P, (p+1)·shards/P). 0: one per process. Fix it to keep the
    # exact data order when a run moves to a different number of hosts.
    shards: int = setting(0, lower="zero")

    def check(self) -> None:
        """The mix's shape; whether its names are scenarios is `data.scenarios.check_mix`'s to say."""
        check_bounds(self, "data")
        if len(self.weights) != len(self.scenarios) or not self.scenarios:
            raise ConfigError(
                "data.weights",
                f"{len(self.weights)} weights for {len(self.scenarios)} scenarios",
                "give one weight per entry of data.scenarios",
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ConfigError("data.weights", f"weights must be >= 0 with a positive sum, got {list(self.weights)}", "")
        if self.camera_off > 1:
            raise ConfigError(
                "data.camera_off", f"{self.camera_off} is not a share of episodes", "use a value in [0, 1]"
            )


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    stream: StreamConfig = StreamConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    kernels: KernelsConfig = KernelsConfig()
    data: DataConfig = DataConfig()
