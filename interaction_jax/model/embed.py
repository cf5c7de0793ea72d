"""Per-modality embeddings, scattered into one sequence by index (DESIGN §5).

Each modality is embedded on its own compact array (audio tokens, image patches) and then added
into the [B, T, D] sequence at the token index it belongs to, so the sequence never carries
per-token patch pixels and the hMLP runs only on real patches.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax import stream
from interaction_jax.config import ModelConfig, StreamConfig
from interaction_jax.model.layers import Dense, LayerNorm, compute_dtype, param


def scatter_into(x: jax.Array, values: jax.Array, index: jax.Array) -> jax.Array:
    """x[b, index[b, i]] += values[b, i]; indices outside [0, T) (unused entries) are dropped."""
    rows = jnp.arange(x.shape[0])[:, None]
    index = jnp.where(index < 0, x.shape[1], index)  # .at[] would wrap a negative index to the end
    return x.at[rows, index].add(values.astype(x.dtype), mode="drop")


def ordinal_init(n_terms: int):
    """Initialise a dMel table [stack, mels, levels, D] so that a channel's levels start out ordered.

    Each (frame, channel) gets one random direction u; level l starts at (l − mid) / mid · u plus a
    smaller independent part. A token's embedding (the sum over its n_terms channels) then begins as
    a linear read-out of its loudness per channel, so a louder band moves it along that band's
    direction and the whole noise floor rising moves it along one common combination, where
    independent random vectors per level would make two neighbouring levels as unlike as silence
    and a shout. The model can still learn any per-level embedding; only the start differs.
    """

    def init(key, shape, dtype=jnp.float32):
        k_dir, k_rest = jax.random.split(key)
        *lead, levels, d = shape
        mid = (levels - 1) / 2
        ramp = (jnp.arange(levels, dtype=jnp.float32) - mid) / mid
        direction = jax.random.normal(k_dir, (*lead, 1, d), jnp.float32)
        rest = jax.random.normal(k_rest, shape, jnp.float32)
        # The ramp over −1 … 1 has mean square ~1/3, so √3 gives the ordered part unit scale; 0.9 and
        # 0.45 split it with the independent part (0.9² + 0.45² ≈ 1): the plain init's 1/√n_terms per term.
        return (n_terms**-0.5 * (ramp[:, None] * direction * 3**0.5 * 0.9 + 0.45 * rest)).astype(dtype)

    return init


class DMelBag(nn.Module):
    """dMel "bag of embeddings": one vector per (frame-in-stack, channel, level), summed per token."""

    d_model: int
    stream: StreamConfig
    dtype: str = "float32"
    table_init: str = "ordinal"  # ModelConfig.dmel_init

    @nn.compact
    def __call__(self, levels: jax.Array) -> jax.Array:
        s = self.stream
        n_terms = s.stack * s.n_mels
        inits = {"ordinal": ordinal_init(n_terms), "normal": nn.initializers.normal(stddev=n_terms**-0.5)}
        if self.table_init not in inits:
            raise ValueError(f"unknown dMel init {self.table_init!r}; use one of {sorted(inits)}")
        table = param(
            self,
            "table",
            (s.stack, s.n_mels, s.dmel_levels, self.d_model),
            (None, None, None, "embed"),
            inits[self.table_init],
        )
        # A one-hot contraction instead of a gather-then-sum: it never materialises the
        # [tokens, stack, mels, D] intermediate and is a plain (deterministic) matmul.
        one_hot = jax.nn.one_hot(levels.astype(jnp.int32), s.dmel_levels, dtype=compute_dtype(self.dtype))
        return jnp.einsum("...scl,scld->...d", one_hot, table.astype(one_hot.dtype))


class HMLPStem(nn.Module):
    """hMLP stem for a 40×40 patch: 10×10 cells → 2×2 → 2×2, each a linear map + LayerNorm.

    Equivalent to convolutions with kernel = stride (10, 2, 2) written as reshapes + Dense, which
    shard and batch like any other matmul. LayerNorm, never BatchNorm (batch invariance).
    """

    d_model: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        lead = patches.shape[:-3]
        c1 = c2 = max(self.d_model // 4, 8)
        x = patches.astype(compute_dtype(self.dtype)) / 255.0 - 0.5
        # [..., 40, 40, 3] → [..., 4, 4, 10*10*3]: cell (r, c) holds pixels (10r + i, 10c + j).
        x = x.reshape(*lead, 4, 10, 4, 10, 3)
        x = jnp.moveaxis(x, -4, -3).reshape(*lead, 4, 4, 300)
        x = nn.gelu(LayerNorm(name="norm1")(Dense(c1, (None, None), self.dtype, use_bias=True, name="proj1")(x)))
        x = self._merge_2x2(x, lead, 4)
        x = nn.gelu(LayerNorm(name="norm2")(Dense(c2, (None, None), self.dtype, use_bias=True, name="proj2")(x)))
        x = self._merge_2x2(x, lead, 2)
        x = Dense(self.d_model, (None, "embed"), self.dtype, use_bias=True, name="proj3")(x)
        return LayerNorm(name="norm3")(x).reshape(*lead, self.d_model)

    @staticmethod
    def _merge_2x2(x: jax.Array, lead: tuple[int, ...], n: int) -> jax.Array:
        """[..., n, n, C] → [..., n/2, n/2, 4C], grouping each 2×2 block of cells."""
        c = x.shape[-1]
        x = x.reshape(*lead, n // 2, 2, n // 2, 2, c)
        x = jnp.moveaxis(x, -4, -3)  # [..., n/2, n/2, 2, 2, C]
        return x.reshape(*lead, n // 2, n // 2, 4 * c)


class Embedder(nn.Module):
    """Step-batch tokens → [B, T, D]: text, dMel bag, hMLP patches with row/col, and the kind."""

    model: ModelConfig
    stream: StreamConfig

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        m, s = self.model, self.stream
        dtype = compute_dtype(m.dtype)
        kind = batch["kind"]
        normal = nn.initializers.normal(stddev=1.0)
        text_table = param(self, "text", (m.vocab_size, m.d_model), ("vocab", "embed"), normal)
        kind_table = param(self, "kind", (stream.NUM_KINDS, m.d_model), (None, "embed"), normal)
        is_text = (kind == stream.Kind.TEXT_IN) | (kind == stream.Kind.TEXT_OUT)
        x = jnp.where(is_text[..., None], text_table.astype(dtype)[batch["text"]], 0)
        x = x + kind_table.astype(dtype)[kind]
        audio = DMelBag(m.d_model, s, m.dtype, m.dmel_init, name="dmel")(batch["audio"])
        if not m.hear_own_voice:
            own = stream.audio_out_entries(kind, batch["audio_index"])
            audio = jnp.where(own[..., None], jnp.zeros_like(audio), audio)
        x = scatter_into(x, audio, batch["audio_index"])
        if s.video:
            rows = param(self, "patch_row", (s.patch_rows, m.d_model), (None, "embed"), normal)
            cols = param(self, "patch_col", (s.patch_cols, m.d_model), (None, "embed"), normal)
            cell = batch["patch_cell"]
            patch = HMLPStem(m.d_model, m.dtype, name="hmlp")(batch["patches"])
            patch = patch + rows.astype(dtype)[cell // s.patch_cols] + cols.astype(dtype)[cell % s.patch_cols]
            x = scatter_into(x, patch, batch["patch_index"])
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
