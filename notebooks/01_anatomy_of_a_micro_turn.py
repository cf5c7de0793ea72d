# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Anatomy of a micro-turn
#
# The model lives in 200 ms chunks. Each chunk is an **input block** (what it hears, sees and reads)
# followed by an **output block** (what it says, in text and in audio), and the whole session is one
# sequence `I0 O0 I1 O1 …` in which a token's position is its wall time. This notebook takes one
# held-out episode apart slot by slot, then steps one `microturn` — one 200 ms tick of the serving
# engine — and looks at what goes in and what comes out.
#
# Run `interaction-jax demo` in the repository root first (it trains the checkpoint this reads), or
# point `WORKDIR` at any training run's folder.

# %% tags=["parameters"]
WORKDIR = "../demo/run"  # a training run's folder: the demo's checkpoint by default
SCENARIO = "turn_taking"  # which scenario's held-out episode to take apart
EPISODE = 0  # the k-th held-out episode of that scenario
CHUNK = None  # the chunk to step through; None: the chunk where the episode's reply starts

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import Audio, display

from interaction_jax import stream, tokenizer
from interaction_jax.data import pipeline, render
from interaction_jax.eval import report
from interaction_jax.eval.rollout import chunk_input, rollout, rollout_engine
from interaction_jax.serve.engine import input_block
from interaction_jax.train import checkpoint

cfg, params, step = checkpoint.load_params(WORKDIR)
s = cfg.stream
clips = pipeline.clip_source(cfg, progress=False)
episode = report.eval_episode(cfg, SCENARIO, EPISODE, clips)
payloads, _ = render.chunk_payloads(episode, s)
print(f"checkpoint {WORKDIR} at step {step}: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}")
print(f"episode: {episode.scenario}, held-out seed {episode.seed}, {episode.num_chunks} chunks of {s.chunk_ms} ms")

# %% [markdown]
# ## The stream, slot by slot
#
# Every chunk has the same layout, except that a video frame (and its patches) arrives only every
# `video_every` chunks. The layout of chunk *k* is a pure function of the config and *k*
# (`stream.chunk_kinds`), so position ↔ time never drifts.

# %%
KIND_COLOURS = {
    stream.Kind.AUDIO_IN: "tab:blue",
    stream.Kind.VIDEO_IN: "tab:green",
    stream.Kind.TEXT_IN: "tab:purple",
    stream.Kind.TEXT_OUT: "tab:red",
    stream.Kind.AUDIO_OUT: "tab:orange",
}
shown = range(3)
fig, ax = plt.subplots(figsize=(12, 1.8))
for k in shown:
    start = stream.chunk_start(s, k)
    kinds = stream.chunk_kinds(s, k)
    for i, kind in enumerate(kinds):
        ax.bar(start + i, 1, width=1, align="edge", color=KIND_COLOURS[stream.Kind(kind)], edgecolor="white")
    split = start + len(stream.input_kinds(s, k))
    ax.axvline(start, color="black", linewidth=2)
    ax.axvline(split, color="black", linewidth=0.8, linestyle="--")
    ax.text(start + 0.5, 1.05, f"chunk {k}: input block", fontsize=8)
    ax.text(split + 0.5, 1.05, "output block", fontsize=8)
ax.set_xlim(0, stream.chunk_start(s, len(shown)))
ax.set_ylim(0, 1.3)
ax.set_yticks([])
ax.set_xlabel("position (global token index, RoPE)")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS.values()]
ax.legend(handles, [k.name for k in KIND_COLOURS], ncol=5, fontsize=8, loc="lower right", bbox_to_anchor=(1, -0.9))
plt.show()

for k in shown:
    counts = {kind.name: int((stream.chunk_kinds(s, k) == kind).sum()) for kind in KIND_COLOURS}
    print(f"chunk {k}: starts at position {stream.chunk_start(s, k):4d}, {stream.chunk_length(s, k)} tokens {counts}")

# %% [markdown]
# ## What each token carries
#
# One chunk's payload (`stream.ChunkPayload`): the user's audio as dMel levels (`stack` frames × 80
# mel channels per AUDIO_IN token, 16 levels), the frame's 40×40 patches (VIDEO_IN), typed text or
# background results (TEXT_IN), and the model's side: what the data has it say (TEXT_OUT: a `<SPEAK>`
# token, then the word's bytes) and the log-mel of its voice (AUDIO_OUT).

# %%
reference_onsets = [k for k, p in enumerate(payloads) if tokenizer.SPEAK in p.text_out]
chunk = CHUNK if CHUNK is not None else (reference_onsets[0] if reference_onsets else 0)
p = payloads[chunk]
print(f"chunk {chunk} ({chunk * s.chunk_ms / 1000:.1f}–{(chunk + 1) * s.chunk_ms / 1000:.1f} s)")
print("TEXT_IN  slots:", [tokenizer.decode([int(i)], skip_pad=False) for i in p.text_in])
print("TEXT_OUT slots:", [tokenizer.decode([int(i)], skip_pad=False) for i in p.text_out], "(the data's reference)")

fig, axes = plt.subplots(1, 3, figsize=(13, 3))
axes[0].imshow(p.audio_in.reshape(-1, s.n_mels).T, origin="lower", aspect="auto", cmap="magma")
axes[0].set_title(f"AUDIO_IN: {s.audio_slots} tokens × {s.stack} frames, dMel level 0–15")
axes[0].set_xlabel("frame (25 ms hop)")
axes[0].set_ylabel("mel channel")
axes[1].imshow(p.audio_out_mel.reshape(-1, s.n_mels).T, origin="lower", aspect="auto", cmap="magma")
axes[1].set_title("AUDIO_OUT: the reference voice, log10-mel")
axes[1].set_xlabel("frame")
frame_chunk = chunk - chunk % s.video_every if s.video else None
if frame_chunk is not None:
    axes[2].imshow(payloads[frame_chunk].frame)
    axes[2].set_title(f"the latest frame (chunk {frame_chunk}): {s.patches_per_frame} VIDEO_IN patches")
    for x in range(0, s.frame_width + 1, 40):
        axes[2].axvline(x - 0.5, color="white", linewidth=0.5)
    for y in range(0, s.frame_height + 1, 40):
        axes[2].axhline(y - 0.5, color="white", linewidth=0.5)
else:
    axes[2].set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The two channels
#
# What the user says, and what the data has the model say back (the reference the model was trained on).

# %%
print("user")
display(Audio(episode.user_audio, rate=s.sample_rate))
print("model, as the data has it")
display(Audio(episode.model_audio, rate=s.sample_rate))
print("model utterances in the data:", [u["text"] for u in episode.annotations["model_utterances"]])

# %% [markdown]
# ## One micro-turn, stepped through
#
# The serving engine keeps a KV cache row per session. Each tick, `microturn` prefills the chunk's
# input block, then generates the output block one slot at a time (TEXT_OUT slots, then AUDIO_OUT
# slots), every slot predicted from the token before it and fed back. Here we feed the episode up to
# the chunk above, then look at that one tick.

# %%
engine = rollout_engine(cfg, params, episode.num_chunks)
slot = engine.open(seed=0)
for k in range(chunk):
    engine.tick({slot: chunk_input(payloads[k], s)})
before = int(engine.cache["length"][slot])
tick_input = chunk_input(payloads[chunk], s)
block = input_block(s, [tick_input])  # what the jitted call receives (one row per session)
print("input block:", {name: (a.shape, a.dtype.name) for name, a in block.items()})
out = engine.tick({slot: tick_input})[slot]
after = int(engine.cache["length"][slot])
engine.close(slot)
print(
    f"cache length {before} → {after}: {after - before} tokens written (chunk_length = {stream.chunk_length(s, chunk)})"
)
print()
print(f"{'slot':>4}  {'said':>10}  {'p(speak)':>8}  reference")
for i, (token, prob, ref) in enumerate(zip(out.text, out.speak_prob, p.text_out, strict=True)):
    said = tokenizer.decode([int(token)], skip_pad=False)
    print(f"{i:>4}  {said:>10}  {prob:8.3f}  {tokenizer.decode([int(ref)], skip_pad=False)}")
print(f"\nthe decision: speak when p(speak) > serve.speak_threshold = {cfg.serve.speak_threshold}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
axes[0].imshow(out.mel.T, origin="lower", aspect="auto", cmap="magma", vmin=s.dmel_min, vmax=s.dmel_max)
axes[0].set_title("AUDIO_OUT the model generated (flow head)")
axes[1].imshow(p.audio_out_mel.reshape(-1, s.n_mels).T, origin="lower", aspect="auto", cmap="magma")
axes[1].set_title("the reference")
plt.show()

# %% [markdown]
# ## The whole episode, free-running
#
# The same engine, every chunk of the episode, the model hearing the episode and running on its own
# output: what a live session would sound like.

# %%
ro = rollout(cfg, params, episode, engine=engine)
said = [tokenizer.spoken_text(row) for row in ro.text]
print("the model said:", " | ".join(f"{k}: {w}" for k, w in enumerate(said) if w) or "nothing")
print("metrics:", {k: v for k, v in ro.metrics(episode.annotations).items() if v is not None})
display(Audio(ro.model_audio(), rate=s.sample_rate))
