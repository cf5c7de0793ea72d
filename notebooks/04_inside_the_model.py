# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inside the model
#
# The decision to speak in chunk *k* is read from one hidden state: the last TEXT_IN token of the
# chunk's input block, which predicts the first TEXT_OUT slot. What does that token look at, and where
# do the tokens of each modality go in the mixture of experts?
#
# `step(..., probe=True)` returns every layer's attention weights and every MoE layer's router
# choices; it is off by default and then costs nothing (the same program). `probing.internals`
# runs an episode teacher-forced through it, as training sees the episode, and aggregates:
#
# - attention of the decision tokens by **kind** of key (audio in, video, text in, text out, audio out);
# - attention by **how many chunks back** the key is;
# - the experts each kind of token is **routed** to.

# %% tags=["parameters"]
WORKDIR = "../demo/run"  # a training run's folder: the demo's checkpoint by default
SCENARIO = "turn_taking"
EPISODE = 0
LAGS = 8  # chunks back to tell apart in the lag plot (the last column pools the rest)

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from interaction_jax import stream, timeline
from interaction_jax.data import pipeline
from interaction_jax.eval import report
from interaction_jax.probing import decision, internals
from interaction_jax.train import checkpoint

cfg, params, step = checkpoint.load_params(WORKDIR)
s = cfg.stream
clips = pipeline.clip_source(cfg, progress=False)
episode = report.eval_episode(cfg, SCENARIO, EPISODE, clips)
inside = internals.probe_episode(cfg, params, episode)
forced = decision.teacher_forced(cfg, params, episode)
KINDS = [stream.Kind(k).name for k in range(stream.NUM_KINDS)][1:]  # PAD (empty) tokens hold no key
n_layers, n_heads = inside.attention.shape[:2]
print(f"step {step}; {n_layers} layers × {n_heads} heads; {inside.kind.size} tokens over {episode.num_chunks} chunks")

# %% [markdown]
# ## The decision tokens, and which ones matter
#
# Chunks where the data starts to speak out of silence (its first slot is `<SPEAK>` after at least two
# silent chunks), against chunks where it stays silent. Their p(speak), teacher-forced:

# %%
said = forced.said
quiet = np.array([k >= 2 and not said[k - 2 : k].any() for k in range(episode.num_chunks)])
onsets = np.nonzero(quiet & said[:, 0])[0]
silent = np.nonzero(quiet & ~said[:, 0])[0]
print("onset chunks:", onsets.tolist(), "p(speak):", np.round(forced.speak_prob[onsets, 0], 2).tolist())
print(f"silent chunks: {silent.size}, mean p(speak) {forced.speak_prob[silent, 0].mean():.3f}")

# %% [markdown]
# ## Attention by kind of key
#
# The share of each decision token's attention that goes to each kind of token, per layer (averaged
# over heads and over the decision tokens of each group). A row sums to one.

# %%
groups = {"onsets": onsets, "silent chunks": silent}
fig, axes = plt.subplots(1, len(groups), figsize=(12, 0.6 * n_layers + 1.5), sharey=True)
for ax, (name, chunks) in zip(np.atleast_1d(axes), groups.items(), strict=True):
    if chunks.size == 0:
        ax.set_title(f"{name}: none in this episode")
        continue
    shares = internals.attention_by_key_kind(
        inside.attention, inside.decision_slots[chunks], inside.kind, average_heads=True
    )[:, 1:]
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (layer, kind), value in np.ndenumerate(shares):
        ax.text(kind, layer, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
    ax.set_xticks(range(len(KINDS)), KINDS, rotation=30, fontsize=8)
    ax.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers)])
    ax.set_title(f"{name} ({chunks.size})")
fig.colorbar(image, ax=axes, shrink=0.8, label="share of attention")
plt.show()

# %% [markdown]
# ## How far back
#
# The same attention by the chunk the key is in: 0 is the decision token's own chunk (its input
# block), 1 the chunk before, and so on; the last column pools everything older.

# %%
fig, axes = plt.subplots(1, len(groups), figsize=(12, 0.6 * n_layers + 1.5), sharey=True)
for ax, (name, chunks) in zip(np.atleast_1d(axes), groups.items(), strict=True):
    if chunks.size == 0:
        continue
    queries = inside.decision_slots[chunks]
    lags = internals.attention_by_lag(inside.attention, queries, inside.chunk[queries], inside.chunk, LAGS)
    image = ax.imshow(lags, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_xticks(range(LAGS), [*map(str, range(LAGS - 1)), f"≥{LAGS - 1}"])
    ax.set_xlabel("chunks back")
    ax.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers)])
    ax.set_title(name)
fig.colorbar(image, ax=axes, shrink=0.8, label="share of attention")
plt.show()

# %% [markdown]
# ## One decision, key by key
#
# The attention of a single decision token (the first onset, or the last chunk if the episode has
# none) over every earlier token, averaged over heads, coloured by the key's kind, one row per layer,
# under the user's waveform.

# %%
chunk = int(onsets[0]) if onsets.size else episode.num_chunks - 1
query = inside.decision_slots[chunk]
colours = {1: "tab:blue", 2: "tab:green", 3: "tab:purple", 4: "tab:red", 5: "tab:orange"}
fig, axes = plt.subplots(n_layers + 1, 1, figsize=(12, 1.4 * (n_layers + 1)), sharex=True)
bins = s.sample_rate // 100
env = timeline.envelope(episode.user_audio, bins)
axes[0].fill_between(np.arange(env.size) * bins / s.sample_rate, -env, env, color="tab:blue", linewidth=0)
axes[0].axvline(chunk * s.chunk_ms / 1000, color="tab:red")
axes[0].set_ylabel("user", rotation=0, ha="right")
axes[0].set_yticks([])
key_time = (inside.chunk + 0.5) * s.chunk_ms / 1000  # each key at its chunk's middle
for layer in range(n_layers):
    weights = inside.attention[layer, :, query, : query + 1].mean(axis=0)
    ax = axes[layer + 1]
    for kind, colour in colours.items():
        keys = np.nonzero(inside.kind[: query + 1] == kind)[0]
        ax.scatter(key_time[keys], weights[keys], s=6, color=colour, label=stream.Kind(kind).name)
    ax.set_ylabel(f"layer {layer}", rotation=0, ha="right")
axes[1].legend(fontsize=7, ncol=5, loc="upper left")
axes[-1].set_xlabel("stream time of the key's chunk (s)")
fig.suptitle(f"chunk {chunk}'s decision token (p(speak) {forced.speak_prob[chunk, 0]:.2f})")
plt.show()

# %% [markdown]
# ## Which experts each modality goes to
#
# Per MoE layer, the fraction of each kind's tokens sent to each expert (each token goes to `top_k`
# experts, so a row sums to `top_k`). Experts that specialise by modality show as rows with different
# shapes.

# %%
routing = internals.router_by_kind(inside.experts, inside.kind, cfg.model.n_experts)[:, 1:]
n_moe = routing.shape[0]
fig, axes = plt.subplots(1, n_moe, figsize=(3.2 * n_moe + 1, 3), sharey=True, squeeze=False)
for ax, layer, table in zip(axes[0], inside.moe_layers, routing, strict=True):
    image = ax.imshow(table, vmin=0, vmax=cfg.model.top_k, cmap="Blues", aspect="auto")
    ax.set_xticks(range(cfg.model.n_experts))
    ax.set_xlabel("expert")
    ax.set_title(f"layer {layer}")
axes[0, 0].set_yticks(range(len(KINDS)), KINDS, fontsize=8)
fig.colorbar(image, ax=axes, shrink=0.8, label=f"share of tokens (top-{cfg.model.top_k})")
plt.show()

entropy = -(inside.router_probs * np.log(inside.router_probs + 1e-12)).sum(-1)  # [L_moe, T]
print(f"router entropy, nats (uniform over {cfg.model.n_experts} experts: {np.log(cfg.model.n_experts):.2f})")
for name, kind in ((k, i + 1) for i, k in enumerate(KINDS)):
    tokens = inside.kind == kind
    if tokens.any():
        print(f"{name:>10}: {entropy[:, tokens].mean():.2f}")
