# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Counterfactual edits
#
# What in the input makes the model speak? Edit the input and watch the decision move. Each edit is a
# library function of an episode (`interaction_jax.probing.edits`) that changes what the user does —
# and moves the episode's annotations and reference output by the scenario's own rules, so the
# markers (and the metrics) describe the edited episode:
#
# - `stretch_pause`: a longer or shorter mid-turn pause (does the model wait it out?);
# - `cut_user_off`: the user stops early (does the reply move with the end of the turn?);
# - `insert_barge_in`: the user cuts in while the model talks (does it yield?);
# - `move_cue`: the red square or the beep comes later (does the response follow the cue?);
# - `change_requested_time`: "tell me when N seconds have passed" with another N.
#
# For each, the model runs free-running on the episode before and after the edit, with the same seed.

# %% tags=["parameters"]
WORKDIR = "../demo/run"  # a training run's folder: the demo's checkpoint by default
SEED = 0  # the rollout seed, the same before and after each edit
EPISODES = 8  # held-out episodes of a scenario to look through for one the edit applies to

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Audio, display

from interaction_jax import timeline
from interaction_jax.data import pipeline, scenarios
from interaction_jax.eval import report
from interaction_jax.eval.rollout import rollout_engine
from interaction_jax.probing import decision, edits
from interaction_jax.train import checkpoint

cfg, params, step = checkpoint.load_params(WORKDIR)
s = cfg.stream
clips = pipeline.clip_source(cfg, progress=False)
engine = rollout_engine(cfg, params, cfg.data.episode_chunks)  # every episode has this length: one compile
print(f"step {step}; {report.sampling_summary(cfg)}")


def first_edited(scenario, edit):
    """The first held-out episode of `scenario` that `edit` applies to, and the edited one."""
    for k in range(EPISODES):
        episode = report.eval_episode(cfg, scenario, k, clips)
        try:
            return episode, edit(episode)
        except ValueError as refused:  # the edit does not apply to this one (no pause, no room, …)
            print(f"{scenario} episode {k}: {refused}")
    raise ValueError(f"no {scenario} episode among the first {EPISODES} takes this edit")


unedited_runs = {}  # (scenario, seed) → the free-running run of a held-out episode as it is


def run(episode, edited):
    if edited:
        return decision.free_running(cfg, params, episode, rng_seed=SEED, engine=engine)
    key = (episode.scenario, episode.seed)
    if key not in unedited_runs:
        unedited_runs[key] = decision.free_running(cfg, params, episode, rng_seed=SEED, engine=engine)
    return unedited_runs[key]


def before_after(before, after, title, metric_keys=()):
    """Both episodes free-running at SEED: user audio, model audio and p(speak), before | after."""
    fig, axes = plt.subplots(3, 2, figsize=(14, 5.5), sharex=True, gridspec_kw={"height_ratios": [1, 1, 2]})
    runs = []
    for col, (name, episode) in enumerate((("before", before), ("after", after))):
        curve, ro = run(episode, edited=col == 1)
        runs.append((curve, ro))
        bins = s.sample_rate // 100
        for row, audio, colour in ((0, episode.user_audio, "tab:blue"), (1, ro.model_audio(), "tab:orange")):
            env = timeline.envelope(audio, bins)
            t = np.arange(env.size) * bins / s.sample_rate
            axes[row, col].fill_between(t, -env, env, color=colour, linewidth=0)
            axes[row, col].set_yticks([])
            axes[row, col].set_ylim(-1, 1)  # the same scale everywhere: quiet noise stays small
        axes[2, col].step(curve.slot_times, curve.speak_prob.ravel(), where="post", label="p(speak)")
        axes[2, col].fill_between(curve.slot_times, 0, curve.said.ravel(), step="post", alpha=0.2, label="speaks")
        axes[2, col].axhline(cfg.serve.speak_threshold, color="0.4", linestyle="--", linewidth=0.8)
        axes[2, col].set_ylim(-0.02, 1.02)
        for time_s, label in edits.markers(episode, s):
            for ax in axes[:, col]:
                ax.axvline(time_s, color="tab:red", linewidth=0.8)
            axes[0, col].text(time_s, 0.9, label, color="tab:red", fontsize=7, va="top")
        axes[0, col].set_title(name)
    axes[0, 0].set_ylabel("user", rotation=0, ha="right")
    axes[1, 0].set_ylabel("model", rotation=0, ha="right")
    axes[2, 0].set_ylabel("p(speak)", rotation=0, ha="right")
    axes[2, 0].legend(fontsize=7, loc="upper left")
    for ax in axes[2]:
        ax.set_xlabel("stream time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    for name, episode, (_, ro) in (("before", before, runs[0]), ("after", after, runs[1])):
        m = ro.metrics(episode.annotations)
        print(f"{name:>6}:", {k: m.get(k) for k in metric_keys})
    return runs


# %% [markdown]
# ## A longer, then a shorter mid-turn pause
#
# Turn-taking episodes have pauses inside the user's utterance (green in notebook 02). Stretched by a
# second, a pause looks more like the end of a turn; does the model start talking in it? Shortened, the
# question is whether it still waits.

# %%
longer = 1.0
before, after = first_edited("turn_taking", lambda ep: edits.stretch_pause(ep, s, seconds=longer, utterance=0, pause=0))
pause = before.annotations["user_utterances"][0]["pauses"][0]
print(f"pause {pause[0]:.2f}–{pause[1]:.2f} s, lengthened by {longer} s")
_ = before_after(before, after, f"the first pause {longer:+} s", ("pause_false_start", "reply_on_time"))

# %%
shorter = -0.2
before, after = first_edited(
    "turn_taking", lambda ep: edits.stretch_pause(ep, s, seconds=shorter, utterance=0, pause=0)
)
_ = before_after(before, after, f"the first pause {shorter:+} s", ("pause_false_start", "reply_on_time"))

# %% [markdown]
# ## The user stops early
#
# Cut the user's first utterance off after 60% of it. The reply the data has moves to right after the
# cut (the red "reply due" marker moves left); a model that listens for the end of the turn follows it.


# %%
def cut_early(ep):
    u = ep.annotations["user_utterances"][0]
    return edits.cut_user_off(ep, s, at_s=u["start"] + 0.6 * (u["end"] - u["start"]), utterance=0)


before, after = first_edited("turn_taking", cut_early)
_ = before_after(before, after, "the user cut off at 60% of their turn", ("reply_on_time", "reply_missed"))
display(Audio(after.user_audio, rate=s.sample_rate))

# %% [markdown]
# ## A barge-in while the model talks
#
# Insert the user cutting in 0.6 s into the data's first reply. The data's own model yields at the end
# of the chunk the barge-in starts in; the metrics are the interruption scenario's.


# %%
def barge_in(ep):
    reply = ep.annotations["model_utterances"][0]
    return edits.insert_barge_in(ep, s, at_s=reply["start"] + 0.6, clips=clips)


before, after = first_edited("turn_taking", barge_in)
runs = before_after(before, after, "a barge-in 0.6 s into the reply", ("talk_over_rate",))
(_, ro_after) = runs[1]
barge_in_metrics = scenarios.get("interruption").metrics(after.annotations, ro_after.text, s)
print("scored as an interruption:", {k: barge_in_metrics.get(k) for k in ("talking_at_barge_in", "yielded")})
display(Audio(after.user_audio, rate=s.sample_rate))

# %% [markdown]
# ## The cue comes later
#
# A cue_speak episode: "tell me when a red square appears" (or "… when you hear a beep"). Move the cue
# a second later: the response the data has moves with it. A model that waits for the cue moves too; a
# model that learnt "some time after the request" does not.


# %%
def later_cue(ep, kind):
    cue = ep.annotations["cues"][0]
    if cue["kind"] != kind:
        raise ValueError(f"its first cue is {cue['kind']}, not {kind}")
    return edits.move_cue(ep, s, seconds=1.0, cue=0)


try:  # a red square if one of the episodes has one that can move (half the cues are visual), else a beep
    before, after = first_edited("cue_speak", lambda ep: later_cue(ep, "visual"))
except ValueError:
    before, after = first_edited("cue_speak", lambda ep: later_cue(ep, "audio"))
cue_before, cue_after = before.annotations["cues"][0], after.annotations["cues"][0]
print(f"a {cue_before['kind']} cue at {cue_before['time']:.2f} s → {cue_after['time']:.2f} s")
_ = before_after(before, after, "the first cue 1 s later", ("cue_hit", "cue_premature"))
if cue_before["kind"] == "visual":  # the frames the model sees at the old and the new cue time
    frame_s = s.video_every * s.chunk_ms / 1000
    shown = [
        (before, cue_before["time"], "before, at the cue"),
        (after, cue_before["time"], "after, at the old time"),
        (after, cue_after["time"], "after, at the new time"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, (episode, time_s, title) in zip(axes, shown, strict=True):
        ax.imshow(episode.frames[round(time_s / frame_s)])
        ax.set_title(f"{title} ({time_s:.1f} s)", fontsize=9)
        ax.set_axis_off()
    plt.show()

# %% [markdown]
# ## Another requested time
#
# A time_speak episode: "tell me when N seconds have passed", re-said (or re-typed) with another N.


# %%
def other_time(ep):
    n = ep.annotations["requests"][0]["n"]
    return edits.change_requested_time(ep, s, seconds=n + 2 if n <= 3 else n - 2, clips=clips, request=0)


before, after = first_edited("time_speak", other_time)
n_before, n_after = before.annotations["requests"][0]["n"], after.annotations["requests"][0]["n"]
print(f"requested {n_before} s → {n_after} s")
_ = before_after(before, after, f"'{n_before} seconds' → '{n_after} seconds'", ("timer_hit", "timer_abs_error_s"))
