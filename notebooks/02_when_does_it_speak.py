# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # When does it speak?
#
# In every TEXT_OUT slot the model makes one decision: say something, or stay silent (PAD). The sampler
# speaks when the calibrated probability of anything but PAD — **p(speak)** — exceeds
# `serve.speak_threshold`. This notebook draws that probability slot by slot over a held-out episode,
# under the user's waveform and the episode's annotations (when a reply is due, where the user pauses),
# and asks how it moves:
#
# - **free-running vs teacher-forced**: streamed through the serving engine on its own output, as a
#   live session is, or run over the episode with the data's own output fed in, as training sees it;
# - **sampling**: temperature changes *what* it says, not the speak decision itself, but what it said
#   is fed back and moves every later decision; the threshold moves the decision directly.

# %% tags=["parameters"]
WORKDIR = "../demo/run"  # a training run's folder: the demo's checkpoint by default
SCENARIO = "turn_taking"  # turn_taking has mid-turn pauses the model must wait through
EPISODE = 0  # the k-th held-out episode of that scenario
SEEDS = (0, 1, 2)  # rollout seeds for each sampling setting
TEMPERATURES = (0.0, 0.8, 1.2)
THRESHOLDS = (0.3, 0.5, 0.7)

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from interaction_jax import timeline
from interaction_jax.data import pipeline
from interaction_jax.eval import report
from interaction_jax.eval.rollout import rollout_engine
from interaction_jax.probing import decision
from interaction_jax.train import checkpoint

cfg, params, step = checkpoint.load_params(WORKDIR)
s = cfg.stream
clips = pipeline.clip_source(cfg, progress=False)
episode = report.eval_episode(cfg, SCENARIO, EPISODE, clips)
markers = report.due_markers(episode.scenario, episode.annotations, s)
# the user's mid-turn pauses, shaded: a pause is not the end of a turn
pauses = [pause for u in episode.annotations["user_utterances"] for pause in u.get("pauses", [])]
engine = rollout_engine(cfg, params, episode.num_chunks)  # one engine: its tick compiles once
print(f"step {step}; {episode.scenario} held-out seed {episode.seed}; sampling: {report.sampling_summary(cfg)}")
print("markers:", [(round(t, 2), label) for t, label in markers])

# %% [markdown]
# ## Free-running and teacher-forced
#
# Red lines mark what the episode's annotations say should happen (a reply due), green shading the
# user's mid-turn pauses, where the model should wait. The curves
# row shows p(speak) in every text slot: where the free-running curve crosses the threshold, the model
# spoke.

# %%
free, ro = decision.free_running(cfg, params, episode, engine=engine)
forced = decision.teacher_forced(cfg, params, episode)


def timeline_with(curves, model_audio, model_text, title):
    return timeline.timeline_figure(
        chunk_s=free.chunk_s,
        sample_rate=s.sample_rate,
        user_audio=episode.user_audio,
        model_audio=model_audio,
        text_in=ro.text_in,
        text_out=report.plottable(model_text),
        markers=markers,
        title=title,
        curves=[(c.label, c.slot_times, c.speak_prob.ravel()) for c in curves],
        threshold=cfg.serve.speak_threshold,
    )


def shade_pauses(axes):
    for ax in axes:
        for start, end in pauses:
            ax.axvspan(start, end, color="tab:green", alpha=0.12, linewidth=0)


figure = timeline_with([free, forced], ro.model_audio(), ro.text, f"{SCENARIO}: the model free-running")
shade_pauses(figure.axes)
display(figure)
metrics = ro.metrics(episode.annotations)
print({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})

# %% [markdown]
# Where the two curves part, the model's own earlier output moved its decision: teacher-forced, it has
# "said" exactly what the data says; free-running, it has said what it said. A model that speaks on
# time teacher-forced but not free-running has learnt to continue the data, not to decide.
#
# ## Sampling: temperature
#
# The speak decision is a threshold on p(speak), the same at every temperature; temperature only picks
# *which* token is said once the slot speaks. Yet the curves move, because the words said are fed back.
# Even greedy text (temperature 0) differs between seeds: the voice is sampled (the flow head at
# `serve.flow_temperature`) and fed back too.


# %%
def sweep(settings, **fixed):
    """{setting: [DecisionCurve per seed]}, and each run's behaviour metrics."""
    curves, rows = {}, []
    for value in settings:
        sampling = decision.sampling(cfg, **{**fixed, **value})
        for seed in SEEDS:
            curve, run = decision.free_running(cfg, params, episode, rng_seed=seed, sampling=sampling, engine=engine)
            curves.setdefault(tuple(value.items()), []).append(curve)
            m = run.metrics(episode.annotations)
            rows.append({**value, "seed": seed, "speaks in chunks": int(curve.said.any(axis=1).sum())} | m)
    return curves, rows


def plot_sweep(curves, title):
    _, axes = plt.subplots(len(curves), 1, figsize=(12, 1.8 * len(curves)), sharex=True, squeeze=False)
    for ax, (setting, runs) in zip(axes[:, 0], curves.items(), strict=True):
        for seed, curve in zip(SEEDS, runs, strict=True):
            ax.step(curve.slot_times, curve.speak_prob.ravel(), where="post", alpha=0.7, label=f"seed {seed}")
        for t, _ in markers:
            ax.axvline(t, color="tab:red", linewidth=0.8)
        shade_pauses([ax])
        ax.axhline(cfg.serve.speak_threshold, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_ylabel(", ".join(f"{k}={v:g}" for k, v in setting), rotation=0, ha="right", va="center")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("stream time (s)")
    plt.show()


KEYS = ("reply_on_time", "reply_missed", "pause_false_start", "talk_over_rate", "speaks in chunks")


def show(rows, setting_key):
    print(f"{setting_key:>12} {'seed':>4} " + " ".join(f"{k:>17}" for k in KEYS))
    for r in rows:
        cells = " ".join(f"{r[k]:>17.3g}" if r.get(k) is not None else f"{'—':>17}" for k in KEYS)
        print(f"{r[setting_key]:>12g} {r['seed']:>4} {cells}")


curves, rows = sweep([{"temperature": t} for t in TEMPERATURES], top_p=0.95)
plot_sweep(curves, "p(speak) free-running, by sampling temperature (top-p 0.95)")
show(rows, "temperature")

# %% [markdown]
# ## Sampling: the speak threshold
#
# The threshold acts on the decision itself: lower, the model speaks on weaker evidence (earlier
# replies, more false starts in pauses); higher, it waits for more (later or missed replies).

# %%
curves, rows = sweep([{"speak_threshold": t} for t in THRESHOLDS])
plot_sweep(curves, "p(speak) free-running (greedy), by speak threshold")
show(rows, "speak_threshold")

# %% [markdown]
# ## How sure is it, where it matters?
#
# The teacher-forced p(speak) at the slots the data marks as decisions out of silence (after 0.4 s of
# PAD): where the data starts to speak, against where it stays silent. The data starts every utterance
# at a chunk boundary, so these decisions all fall in a chunk's first text slot. A model that decides well puts the
# first well above the threshold and the second well below.

# %%
QUIET = 8  # slots of silence before a slot for it to count as a decision out of silence (0.4 s)
said = forced.said.ravel()
quiet_before = np.array([i >= QUIET and not said[i - QUIET : i].any() for i in range(said.size)])
onset, silent = quiet_before & said, quiet_before & ~said
first_slot = np.arange(said.size) % s.text_out_slots == 0
onset, silent = onset & first_slot, silent & first_slot
probs = forced.speak_prob.ravel()
fig, ax = plt.subplots(figsize=(7, 3))
bins = np.linspace(0, 1, 21)
ax.hist(probs[silent], bins=bins, alpha=0.6, density=True, label=f"silent slots (n={silent.sum()})")
ax.hist(probs[onset], bins=bins, alpha=0.6, density=True, label=f"onsets out of silence (n={onset.sum()})")
ax.axvline(cfg.serve.speak_threshold, color="0.4", linestyle="--")
ax.set_xlabel("p(speak), teacher-forced")
ax.legend(fontsize=8)
plt.show()
