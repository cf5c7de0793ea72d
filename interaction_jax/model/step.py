"""The one step function and what training and serving build on it (DESIGN §6).

`step(params, cache, batch)` is the only forward pass. Training calls it once over a whole window
with an empty cache (`window_forward`, which `train/loss.loss_fn` scores); serving calls it for each
input block and each output slot inside one jitted `microturn` per chunk. Both see the same code, so
they can only differ numerically by the order of floating-point reductions (which the batch-invariant
kernels will pin down).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from interaction_jax import stream, tokenizer
from interaction_jax.config import PATCH_SIZE, Config, ModelConfig
from interaction_jax.model.cache import Cache, capacity, init_cache
from interaction_jax.model.heads import euler_sample, flow_matching_loss, sample_text_or_silence, speak_probability
from interaction_jax.model.transformer import InteractionModel, is_dense_layer, layer_intermediates

Kind = stream.Kind


def build_model(cfg: Config, window: bool = False) -> InteractionModel:
    return InteractionModel(cfg.model, cfg.stream, cfg.kernels, window)


def dummy_batch(cfg: Config, batch: int = 1, length: int = 1) -> dict[str, jax.Array]:
    """A well-formed step batch of the given size (for `init` and shape inference)."""
    s = cfg.stream
    n_patches = max(s.patches_per_frame, 1)
    return {
        "kind": jnp.full((batch, length), Kind.TEXT_IN, jnp.int32),
        "position": jnp.zeros((batch, length), jnp.int32),
        "text": jnp.zeros((batch, length), jnp.int32),
        "audio": jnp.zeros((batch, 1, s.stack, s.n_mels), jnp.uint8),
        "audio_index": jnp.zeros((batch, 1), jnp.int32),
        "patches": jnp.zeros((batch, n_patches, PATCH_SIZE, PATCH_SIZE, 3), jnp.uint8),
        "patch_index": jnp.zeros((batch, n_patches), jnp.int32),
        "patch_cell": jnp.zeros((batch, n_patches), jnp.int32),
    }


def init_variables(cfg: Config, rng: jax.Array) -> dict:
    """Flax variables with logically partitioned (boxed) leaves; pass through `nn.unbox` for arrays.

    Wrap this in `sharding.init_sharded` to create the parameters already sharded.
    """
    cache = init_cache(cfg.model, 1, 1)
    slots = jnp.zeros((1, 1), jnp.int32)
    return build_model(cfg).init(rng, dummy_batch(cfg), cache, slots, method=InteractionModel.init_all)


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: Config, rng: jax.Array) -> dict:
    """Unsharded float32 parameters (a plain pytree of arrays)."""
    return nn.unbox(init_variables(cfg, rng))["params"]


def token_slots(kind: jax.Array, length: jax.Array, cap: int) -> jax.Array:
    """Cache slot of each token: written tokens take the next free slots in order; an empty (PAD-kind)
    token gets slot `cap`, which is never written and never attended to."""
    valid = kind != Kind.PAD
    return jnp.where(valid, length[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, cap)


def step(
    params: dict, cache: Cache, batch: dict, *, cfg: Config, window: bool = False, probe: bool = False
) -> tuple[jax.Array, Cache, dict]:
    """Run the transformer over `batch` (T tokens per row) after everything already in `cache`.

    Returns the float32 hidden states [B, T, D], the cache with the batch's keys/values written and
    `length` advanced by each row's non-empty tokens, and the MoE aux losses of this call.
    Tokens past the cache's capacity are not written (callers check `length` against capacity).
    `window`: the caller promises `cache` is empty (a whole window), which lets attention skip the
    keys no query can see yet (`InteractionModel.window`); the same maths either way.

    `probe`: also look inside the pass. `aux["probe"]` (`probe_arrays`) then holds every layer's
    attention weights of the batch's queries over the cache slots, and every MoE layer's router
    probabilities and chosen experts: the blocks sow them into the `intermediates` collection, which
    is mutable only here. The hidden states, cache and losses are the same bits either way; with
    `probe` off nothing is sown and no weights are computed, so the traced program is the one without
    the option (training, `microturn` and serving never turn it on).
    """
    slots = token_slots(batch["kind"], cache["length"], capacity(cache))
    model = build_model(cfg, window)
    if probe:
        (hidden, layers, aux), sown = model.apply({"params": params}, batch, cache, slots, mutable=["intermediates"])
        aux = aux | {"probe": probe_arrays(sown["intermediates"], cfg.model)}
    else:
        hidden, layers, aux = model.apply({"params": params}, batch, cache, slots)
    written = jnp.sum(batch["kind"] != Kind.PAD, axis=1, dtype=jnp.int32)
    return hidden, {"layers": layers, "length": cache["length"] + written, "chunk": cache["chunk"]}, aux


def probe_arrays(intermediates: dict, cfg: ModelConfig) -> dict[str, jax.Array]:
    """What `step(..., probe=True)` reports from the blocks' sown `intermediates`, in layer order:

    - `attention` float32 [L, B, H, T, S]: each layer's attention weights of the T queries over the S
      cache slots (query heads; the softmax over the slots a query sees, exactly 0 on the others; an
      empty token's row is over every slot and means nothing);
    - `router_probs` float32 [L_moe, B, T, E]: the router's softmax of each MoE layer;
    - `experts` int32 [L_moe, B, T, top_k]: the experts each token is sent to, best first;
    - `moe_layers` int32 [L_moe]: the layer index of each row of the router arrays (dense layers,
      `model.dense_every`, have no router).
    """
    layers = [layer_intermediates(intermediates, cfg, i) for i in range(cfg.n_layers)]
    moe_layers = [i for i in range(cfg.n_layers) if not is_dense_layer(cfg, i)]

    def stacked(module: str, name: str, rows: list[int]) -> jax.Array:
        return jnp.stack([layers[i][module][name][0] for i in rows])  # `sow` keeps a 1-tuple per call

    attention = stacked("attn", "attention", list(range(cfg.n_layers)))
    if not moe_layers:  # every layer dense: empty router arrays of the right rank
        b, _, t, _ = attention.shape[1:]
        routed = {
            "router_probs": jnp.zeros((0, b, t, cfg.n_experts), jnp.float32),
            "experts": jnp.zeros((0, b, t, cfg.top_k), jnp.int32),
        }
    else:
        routed = {name: stacked("moe", name, moe_layers) for name in ("router_probs", "experts")}
    return {"attention": attention, **routed, "moe_layers": jnp.asarray(moe_layers, jnp.int32)}


def text_logits(params: dict, hidden: jax.Array, *, cfg: Config) -> jax.Array:
    """Float32 logits over the vocabulary; the padded tail beyond the tokenizer's ids can never win."""
    logits = build_model(cfg).apply({"params": params}, hidden, method=InteractionModel.text_logits)
    real = jnp.arange(logits.shape[-1]) < tokenizer.NUM_IDS
    return jnp.where(real, logits, jnp.finfo(jnp.float32).min)


def vap_logits(params: dict, hidden: jax.Array, *, cfg: Config) -> jax.Array:
    """The voice-activity projection head's float32 logits [..., model.vap_horizon] at hidden states
    [..., D]: the share of each of the next chunks the user speaks (needs `model.vap_horizon` > 0)."""
    if not cfg.model.vap_horizon:
        raise ValueError("the model has no voice-activity projection head (model.vap_horizon is 0)")
    return build_model(cfg).apply({"params": params}, hidden, method=InteractionModel.vap_logits)


def flow_velocity(params: dict, cond: jax.Array, cfg: Config):
    """The flow head's velocity field conditioned on hidden states `cond` [N, D]: (x_t, t) → v."""
    model = build_model(cfg)
    return lambda x_t, t: model.apply({"params": params}, cond, x_t, t, method=InteractionModel.flow_velocity)


def window_forward(params: dict, batch: dict, *, cfg: Config) -> tuple[jax.Array, dict]:
    """`step` over whole windows from an empty cache sized to them: the hidden states [B, T, D] and the
    MoE aux losses (how training runs the model)."""
    b, length = batch["kind"].shape
    hidden, _, aux = step(params, init_cache(cfg.model, b, length), batch, cfg=cfg, window=True)
    return hidden, aux


def flow_loss(params: dict, cond: jax.Array, target: jax.Array, mask: jax.Array, rng: jax.Array, *, cfg: Config):
    """The flow head's flow-matching loss (`heads.flow_matching_loss`) of normalized mel targets [N, F]
    conditioned on hidden states `cond` [N, D], over the entries where `mask` [N] is set."""
    return flow_matching_loss(flow_velocity(params, cond, cfg), target, mask, rng)


@flax.struct.dataclass
class Sampling:
    """Sampling settings of `microturn`. The floats are traced: changing them does not recompile.

    Each TEXT_OUT slot first decides to speak or stay silent (PAD unless the calibrated probability of
    any other token exceeds `speak_threshold`), then picks what to say from the other tokens, greedy at
    temperature 0, else by nucleus sampling (`heads.sample_text_or_silence`).
    `pad_bias` is added to the PAD logit before sampling (the returned `text_logits` stay the model's
    own). Training with PAD targets weighted by w < 1 makes the loss-optimal model over-state every
    other token by 1/w against PAD; adding log(1/w) undoes exactly that, so the sampler sees calibrated
    probabilities (`from_config` does it when `serve.calibrate_pad` is on).
    """

    temperature: jax.Array | float = 0.0
    top_p: jax.Array | float = 1.0
    flow_temperature: jax.Array | float = 1.0
    pad_bias: jax.Array | float = 0.0
    speak_threshold: jax.Array | float = 0.5
    flow_steps: int = flax.struct.field(pytree_node=False, default=8)

    @classmethod
    def from_config(cls, cfg: Config) -> Sampling:
        s = cfg.serve
        return cls(
            jnp.float32(s.temperature),
            jnp.float32(s.top_p),
            jnp.float32(s.flow_temperature),
            jnp.float32(pad_logit_bias(cfg.train.pad_weight) if s.calibrate_pad else 0.0),
            jnp.float32(s.speak_threshold),
            s.flow_steps,
        )


def pad_logit_bias(pad_weight: float) -> float:
    """log(1/w): what to add to the PAD logit of a model trained with PAD targets weighted by w.

    With weighted cross-entropy −w·q_pad·log p_pad − Σ q_i log p_i the optimum is
    p_i ∝ q_i (i ≠ PAD), p_pad ∝ w·q_pad; adding log(1/w) to the PAD logit recovers q.
    """
    if not pad_weight > 0:
        raise ValueError(f"pad_weight must be > 0 to calibrate against it, got {pad_weight}")
    return float(-math.log(pad_weight))


def calibrated_logits(logits: jax.Array, pad_bias: jax.Array | float) -> jax.Array:
    """`logits` [..., V] with `pad_bias` added to PAD's: what the sampler draws from."""
    return logits.at[..., tokenizer.PAD].add(jnp.asarray(pad_bias, logits.dtype))


def input_block_batch(cfg: Config, cache: Cache, block: dict) -> dict:
    """The step batch of one chunk's input block: AUDIO_IN, VIDEO_IN (on frame chunks), TEXT_IN.

    The block has a fixed size for every chunk (the VIDEO_IN slots become empty tokens when no frame
    falls in the chunk), so serving never recompiles; inactive rows write nothing.
    """
    s = cfg.stream
    b = block["text"].shape[0]
    n_audio, n_patch = s.audio_slots, s.patches_per_frame
    has_frame = cache["chunk"] % s.video_every == 0 if s.video else jnp.zeros((b,), bool)
    kind = stream.input_block_kinds(s, has_frame)
    kind = jnp.where(block["active"][:, None], kind, Kind.PAD).astype(jnp.int32)
    n = kind.shape[1]
    text = jnp.concatenate(
        [jnp.full((b, n_audio + n_patch), tokenizer.PAD, jnp.int32), block["text"].astype(jnp.int32)], axis=1
    )
    batch = {
        "kind": kind,
        # A live session starts at position 0 with an empty cache and writes every non-empty token,
        # so a token's global position is its cache slot.
        "position": token_slots(kind, cache["length"], capacity(cache)),
        "text": text,
        "audio": block["audio"],
        "audio_index": jnp.broadcast_to(jnp.arange(n_audio, dtype=jnp.int32), (b, n_audio)),
    }
    if s.video:
        patch_index = jnp.where(has_frame[:, None], n_audio + jnp.arange(n_patch, dtype=jnp.int32), n)
        batch |= {
            "patches": block["patches"],
            "patch_index": patch_index,
            "patch_cell": jnp.broadcast_to(jnp.arange(n_patch, dtype=jnp.int32), (b, n_patch)),
        }
    return batch


def _one_token_batch(
    cfg: Config, kind: jax.Array, cache: Cache, text: jax.Array | None = None, audio: jax.Array | None = None
) -> dict:
    """The step batch of a single output token per row (TEXT_OUT with `text`, or AUDIO_OUT with `audio`)."""
    b = kind.shape[0]
    s = cfg.stream
    kind = kind[:, None]
    batch = {
        "kind": kind,
        "position": token_slots(kind, cache["length"], capacity(cache)),
        "text": (text if text is not None else jnp.full((b,), tokenizer.PAD, jnp.int32))[:, None],
        "audio": (audio if audio is not None else jnp.zeros((b, s.stack, s.n_mels), jnp.uint8))[:, None],
        "audio_index": jnp.full((b, 1), 0 if audio is not None else 1, jnp.int32),
    }
    if s.video:  # no patches in output tokens: one unused entry keeps the structure fixed
        batch |= {
            "patches": jnp.zeros((b, 1, PATCH_SIZE, PATCH_SIZE, 3), jnp.uint8),
            "patch_index": jnp.ones((b, 1), jnp.int32),
            "patch_cell": jnp.zeros((b, 1), jnp.int32),
        }
    return batch


def split_keys(rng: jax.Array, n: int) -> jax.Array:
    """`n` keys along a new leading axis: [n] from one key, [n, B] from one key per row (each row split alone)."""
    if rng.ndim == 0:
        return jax.random.split(rng, n)
    return jnp.moveaxis(jax.vmap(lambda r: jax.random.split(r, n))(rng), 1, 0)


def microturn(
    params: dict, cache: Cache, input_block: dict, rng: jax.Array, sampling: Sampling, *, cfg: Config
) -> tuple[dict, Cache]:
    """One 200 ms tick for every row: prefill the chunk's input block, then generate its output block.

    `input_block`: `audio` uint8 [B, audio_slots, stack, n_mels] dMel levels; `text` int32
    [B, text_in_slots]; `patches` uint8 [B, patches_per_frame, 40, 40, 3] (when video is on; read
    only on frame chunks); `active` bool [B] (inactive rows are left untouched). Optional teacher
    forcing: `teacher_text` int32 [B, text_out_slots] and/or `teacher_mel` float32
    [B, audio_slots, stack, n_mels] replace the sampled outputs that are fed back.

    `rng`: one key for the whole batch, or one key per row ([B] keys, typed or raw uint32 [B, 2] key
    data) so that a row's samples depend on its own key alone, whatever else is in the batch (serving
    gives each session its own).

    Output slots are generated in order (TEXT_OUT then AUDIO_OUT, one `lax.scan` each); every slot
    is predicted from the hidden state of the token before it and fed back through `step`, with
    generated mel re-quantised to dMel exactly as training embeds AUDIO_OUT.

    Returns ({`text` [B, To], `text_logits` [B, To, V], `speak_prob` [B, To], `mel` [B, Ao, stack, n_mels]
    log10-mel, `audio` [B, Ao, stack, n_mels] dMel levels}, cache). `speak_prob` is the calibrated
    probability of saying anything in the slot (`heads.speak_probability`), the number the sampler's
    speak-or-stay-silent decision compares with `speak_threshold`; `text_logits` are the model's own.
    """
    s = cfg.stream
    active = input_block["active"]
    hidden, cache, _ = step(params, cache, input_block_batch(cfg, cache, input_block), cfg=cfg)
    h = hidden[:, -1]  # the last TEXT_IN token predicts the first TEXT_OUT slot
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    text_rng, audio_rng = split_keys(rng, 2)

    def text_slot(carry, xs):
        h, cache = carry
        slot_rng, teacher = xs
        logits = text_logits(params, h, cfg=cfg)
        calibrated = calibrated_logits(logits, sampling.pad_bias)
        token = sample_text_or_silence(
            calibrated,
            tokenizer.PAD,
            sampling.speak_threshold,
            sampling.temperature,
            sampling.top_p,
            slot_rng,
        )
        token = teacher if teacher is not None else token
        kind = jnp.where(active, Kind.TEXT_OUT, Kind.PAD).astype(jnp.int32)
        hidden, cache, _ = step(params, cache, _one_token_batch(cfg, kind, cache, text=token), cfg=cfg)
        return (hidden[:, 0], cache), (token, logits, speak_probability(calibrated, tokenizer.PAD))

    def audio_slot(carry, xs):
        h, cache = carry
        slot_rng, teacher = xs
        frames = euler_sample(
            flow_velocity(params, h, cfg),
            (h.shape[0], s.stack * s.n_mels),
            sampling.flow_steps,
            sampling.flow_temperature,
            slot_rng,
        )
        mel = stream.denormalize_mel(frames.reshape(-1, s.stack, s.n_mels), s)
        mel = teacher if teacher is not None else mel
        levels = stream.quantize_dmel(mel, s)
        kind = jnp.where(active, Kind.AUDIO_OUT, Kind.PAD).astype(jnp.int32)
        hidden, cache, _ = step(params, cache, _one_token_batch(cfg, kind, cache, audio=levels), cfg=cfg)
        return (hidden[:, 0], cache), (mel, levels)

    def slot_inputs(key, n, teacher):
        return split_keys(key, n), (None if teacher is None else jnp.moveaxis(teacher, 1, 0))

    teacher_text = input_block.get("teacher_text")
    teacher_mel = input_block.get("teacher_mel")
    (h, cache), (tokens, logits, speak) = jax.lax.scan(
        text_slot, (h, cache), slot_inputs(text_rng, s.text_out_slots, teacher_text)
    )
    (h, cache), (mel, levels) = jax.lax.scan(audio_slot, (h, cache), slot_inputs(audio_rng, s.audio_slots, teacher_mel))
    cache = cache | {"chunk": cache["chunk"] + active.astype(jnp.int32)}
    outputs = {
        "text": jnp.moveaxis(tokens, 0, 1),
        "text_logits": jnp.moveaxis(logits, 0, 1),
        "speak_prob": jnp.moveaxis(speak, 0, 1),
        "mel": jnp.moveaxis(mel, 0, 1),
        "audio": jnp.moveaxis(levels, 0, 1),
    }
    return outputs, cache


def jit_microturn(cfg: Config):
    """`microturn` jitted for `cfg`, donating the cache so the tick updates it in place."""
    return jax.jit(functools.partial(microturn, cfg=cfg), donate_argnums=(1,))
