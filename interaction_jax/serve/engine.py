"""The micro-turn engine: a fixed-capacity on-device KV cache, a slot allocator, one batched tick.

The cache has `serve.max_sessions` rows of `serve.max_len` slots and lives on the device for the
engine's whole life. A session owns one row (its *slot*) from `open` to `close`. Every tick is one
jitted call over all rows: rows with input this tick are active, the others are masked (they write
nothing and their counters stand still), so the call's shapes never change and it compiles once.
The cache is donated to the call and comes back updated in place.

A freshly opened slot is reset inside the tick (length and chunk counters to 0); the keys and values
a previous session left behind need no clearing, since attention never looks past a row's length.
Each session samples with its own key, `fold_in(key(seed), chunk)`, drawn per row inside the call,
so a session's outputs depend on its seed and its own inputs, not on who else is in the batch (up to
the floating-point reduction order of batched matmuls, which the batch-invariant kernels will fix).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax import stream
from interaction_jax.config import PATCH_SIZE, Config, StreamConfig
from interaction_jax.model import step as step_lib
from interaction_jax.model.cache import Cache, init_cache


class CapacityError(RuntimeError):
    """Every slot of the engine is taken."""


@dataclasses.dataclass(frozen=True)
class ChunkInput:
    """One session's input block for one tick, tokenised.

    audio: uint8 [audio_slots, stack, n_mels] dMel levels; text: int32 [text_in_slots];
    patches: uint8 [patches_per_frame, 40, 40, 3] (video on; read only on frame chunks) or None.
    """

    audio: np.ndarray
    text: np.ndarray
    patches: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ChunkOutput:
    """What the model produced for one session in one tick.

    chunk: the session's chunk index; text: int32 [text_out_slots]; mel: float32
    [frames_per_chunk, n_mels] log10-mel; audio: uint8 [audio_slots, stack, n_mels] dMel levels;
    speak_prob: float32 [text_out_slots], the calibrated probability of saying anything in each text
    slot, which the speak-or-stay-silent decision compared with `serve.speak_threshold`.
    """

    chunk: int
    text: np.ndarray
    mel: np.ndarray
    audio: np.ndarray
    speak_prob: np.ndarray


def input_block(s: StreamConfig, rows: Sequence[ChunkInput | None]) -> dict[str, np.ndarray]:
    """The batched `microturn` input block of one tick: row i from `rows[i]`, inactive where None."""
    n = len(rows)
    block = {
        "audio": np.zeros((n, s.audio_slots, s.stack, s.n_mels), np.uint8),
        "text": np.zeros((n, s.text_in_slots), np.int32),
        "active": np.array([x is not None for x in rows], bool),
    }
    if s.video:
        block["patches"] = np.zeros((n, s.patches_per_frame, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
    for i, x in enumerate(rows):
        if x is None:
            continue
        block["audio"][i] = x.audio
        block["text"][i] = x.text
        if s.video and x.patches is not None:
            block["patches"][i] = x.patches
    return block


def _tick(
    params: dict,
    cache: Cache,
    block: dict,
    seeds: jax.Array,
    reset: jax.Array,
    sampling: step_lib.Sampling,
    *,
    cfg: Config,
) -> tuple[dict, Cache]:
    zero = jnp.zeros_like(cache["length"])
    cache = cache | {
        "length": jnp.where(reset, zero, cache["length"]),
        "chunk": jnp.where(reset, zero, cache["chunk"]),
    }
    keys = jax.vmap(lambda s, k: jax.random.fold_in(jax.random.key(s), k))(seeds, cache["chunk"])
    outputs, cache = step_lib.microturn(params, cache, block, keys, sampling, cfg=cfg)
    return {k: outputs[k] for k in ("text", "mel", "audio", "speak_prob")}, cache


def _home(params: dict) -> jax.Device:
    """The device the params live on (the default device when none of them is committed to one)."""
    for x in jax.tree.leaves(params):
        if isinstance(x, jax.Array) and x.committed and len(x.devices()) == 1:
            return next(iter(x.devices()))
    return jax.devices()[0]


@functools.lru_cache(maxsize=8)
def jitted_tick(cfg: Config):
    """The tick jitted for `cfg`, shared by every engine of that config (one compile per cache shape)."""
    return jax.jit(functools.partial(_tick, cfg=cfg), donate_argnums=(1,))


class Engine:
    """`max_sessions` sessions of up to `max_len` tokens each, ticked together.

        engine = Engine(cfg, params)
        slot = engine.open(seed=1)
        outputs = engine.tick({slot: ChunkInput(audio, text)})   # {slot: ChunkOutput}
        engine.close(slot)

    Not thread-safe: one caller ticks (the session manager runs ticks on one worker thread).
    """

    def __init__(self, cfg: Config, params: dict, *, max_sessions: int | None = None, max_len: int | None = None):
        self.cfg = cfg
        self.params = params
        self.max_sessions = max_sessions or cfg.serve.max_sessions
        self.max_len = max_len or cfg.serve.max_len
        s = cfg.stream
        if self.max_len < stream.chunk_length(s, 0):
            raise ValueError(f"max_len {self.max_len} does not hold one chunk ({stream.chunk_length(s, 0)} tokens)")
        self.sampling = step_lib.Sampling.from_config(cfg)
        # The cache starts where the tick's outputs will live: a tick's output is committed to a device
        # whenever an input is (params restored from a checkpoint are), and jit keys its programs on
        # commitment, so an uncommitted first cache made the first real tick after warm-up compile again.
        self.cache = jax.device_put(init_cache(cfg.model, self.max_sessions, self.max_len), _home(params))
        self.warm = False
        self._fn = jitted_tick(cfg)
        self._free = list(range(self.max_sessions))
        self._seeds = np.zeros(self.max_sessions, np.uint32)
        self._reset = np.zeros(self.max_sessions, bool)
        self._chunk = np.zeros(self.max_sessions, np.int64)  # host mirror of the cache's counters
        self._length = np.zeros(self.max_sessions, np.int64)

    # -- slots

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def open(self, seed: int = 0) -> int:
        """A free slot for a new session that samples with `seed`; CapacityError when all are taken."""
        if not self._free:
            raise CapacityError(f"all {self.max_sessions} session slots are in use")
        slot = self._free.pop(0)
        self._seeds[slot] = np.uint32(seed % 2**32)
        self._reset[slot] = True
        self._chunk[slot] = self._length[slot] = 0
        return slot

    def close(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.max_sessions:
            raise ValueError(f"slot {slot} is not open")
        self._free.append(slot)
        self._free.sort()

    def chunk_index(self, slot: int) -> int:
        """The chunk the slot's next tick is."""
        return int(self._chunk[slot])

    def fits_next_chunk(self, slot: int) -> bool:
        """Whether the slot's next chunk still fits in its cache row."""
        return self._length[slot] + stream.chunk_length(self.cfg.stream, self.chunk_index(slot)) <= self.max_len

    # -- ticks

    @property
    def compilations(self) -> int:
        """How many programs the tick has compiled: one per cache shape (shared by engines of this config);
        it must not grow after warm-up."""
        return self._fn._cache_size()

    def warm_up(self) -> None:
        """Compile the tick with every row idle (nothing changes in the cache); afterwards the cache is a
        tick's output, as before every real tick, so the compile count stays where it is."""
        self.tick({})
        self.warm = True

    def _block(self, inputs: Mapping[int, ChunkInput]) -> dict[str, np.ndarray]:
        for slot in inputs:
            if slot in self._free:
                raise ValueError(f"slot {slot} is not open")
            if not self.fits_next_chunk(slot):
                raise ValueError(f"slot {slot}: the next chunk does not fit in its {self.max_len} cache slots")
        return input_block(self.cfg.stream, [inputs.get(slot) for slot in range(self.max_sessions)])

    def tick(self, inputs: Mapping[int, ChunkInput]) -> dict[int, ChunkOutput]:
        """One micro-turn for every slot in `inputs`; the other slots stand still."""
        block = self._block(inputs)
        # Copies of the host state: the call is dispatched asynchronously and may read numpy inputs in
        # place, after `open` or the line below has already changed them.
        seeds, reset = self._seeds.copy(), self._reset.copy()
        out, self.cache = self._fn(self.params, self.cache, block, seeds, reset, self.sampling)
        self._reset[:] = False
        text, mel, audio, speak = jax.device_get((out["text"], out["mel"], out["audio"], out["speak_prob"]))
        s = self.cfg.stream
        results = {}
        for slot in inputs:
            k = self.chunk_index(slot)
            results[slot] = ChunkOutput(
                chunk=k,
                text=np.asarray(text[slot], np.int32),
                mel=np.asarray(mel[slot], np.float32).reshape(s.audio_slots * s.stack, s.n_mels),
                audio=np.asarray(audio[slot], np.uint8),
                speak_prob=np.asarray(speak[slot], np.float32),
            )
            self._length[slot] += stream.chunk_length(s, k)
            self._chunk[slot] = k + 1
        return results
