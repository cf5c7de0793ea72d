"""How much does the user's audio say about whether a silence is a mid-turn pause or the end of the turn?

    python benchmarks/turn_end_cue.py [--train-episodes 1500] [--heldout-episodes 150] [--workdir demo/run]
                                      [--features log_mel|dmel] [--set stream.dmel_levels=32] [--conv]
                                      [--out results/turn_end_cue.json]

The turn-taking gates (reply on time ≥ 90% with ≤ 10% false starts in mid-turn pauses) ask the model
to tell, within 200–400 ms of the user falling silent, a pause from the end of the turn. In the data
the two differ only in the voice itself (a pause is cut between two words of one eSpeak rendering, so
the words before it carry non-final prosody) and in what was said. This measures the first: a
logistic regression on the standardised log-mel of the last 100 / 200 / 400 ms before each silence,
fitted on training-split episodes (its L2 strength picked by cross-validation over their voices and
lines) and scored on held-out episodes, whose voices and lines the training split never has. It
reports accuracy against the majority class, and the share of turn ends it catches when it may fire
in at most 10% of pauses: the gates' operating point. It is not a bound on what a deep model can hear,
but it says how plainly the sound alone marks the end of a turn. `--features dmel` gives the read-out
what the model hears instead: the log-mel rounded to its dMel levels.

`--conv` adds a nonlinear read-out over longer stretches (400 / 800 / 1,600 ms): a small dilated 1-D
convolution over the frames (`ConvReadout`), its training length picked on a validation fold of voices
and lines the fit never sees, then refitted on every training silence. Still the sound alone (it hears
a second and a half, but from a few thousand silences of a few dozen lines it cannot learn words that
carry to new ones); a sharper estimate of how much of a turn's end the voice marks than the linear one.

With `--workdir`, the same held-out silences are scored by a trained model too, teacher-forced: its
calibrated probability of starting to speak (1 − p(PAD), with the decoding's PAD correction) at the
first TEXT_OUT slot of the two chunks after the silence starts (the reply rule's window; the second only
while the data is still silent), the larger of the two, on the same two numbers.
Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.audio import features
from interaction_jax.data import pipeline, render, scenarios
from interaction_jax.data.episode import ScenarioContext
from interaction_jax.data.scenarios.scoring import end_chunk
from interaction_jax.model import cache as cache_lib
from interaction_jax.model import step as step_lib
from interaction_jax.train import checkpoint

WINDOWS_MS = (100, 200, 400)
CONV_WINDOWS_MS = (400, 800, 1600)
CONV_STEPS, CONV_BATCH, CONV_EVAL_EVERY = 3000, 256, 100
L2_STRENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FOLDS = 3
PAUSE_FALSE_START_BAR = 0.10  # the turn-taking gate on starts in mid-turn pauses


def turn_taking_episodes(cfg: config_lib.Config, split: str, episodes: int, clips):
    ctx = ScenarioContext(stream=cfg.stream, clips=clips, split=split, num_chunks=cfg.data.episode_chunks)
    for index in range(episodes):
        yield scenarios.make_episode("turn_taking", pipeline.episode_seed(cfg.data, split, index), ctx)


def silences(ep) -> list[tuple[float, int, str]]:
    """(time the user falls silent, 1 if the turn ends there else 0, the line) for every stretch of speech."""
    return [
        (t, label, u["text"])
        for u in ep.annotations["user_utterances"]
        for t, label in [(pause[0], 0) for pause in u.get("pauses", [])] + [(u["end"], 1)]
    ]


def user_features(wave: np.ndarray, s, kind: str) -> np.ndarray:
    """[frames, n_mels] of the user channel: the log-mel, or the dMel levels' log-mel values (what the model
    hears: `stream.dmel_levels` levels on [dmel_min, dmel_max])."""
    mel = features.log_mel(wave, s)
    return stream.dequantize_dmel(stream.quantize_dmel(mel, s), s) if kind == "dmel" else mel


def silence_onsets(cfg: config_lib.Config, split: str, episodes: int, clips, kind: str = "log_mel") -> list[tuple]:
    """(`kind` frames of the user channel, frame where a silence starts, 1 if it ends the turn else 0,
    (the user's voice, the user's line))."""
    s = cfg.stream
    hop = features.hop_samples(s)
    out = []
    for ep in turn_taking_episodes(cfg, split, episodes, clips):
        mel = user_features(ep.user_audio, s, kind)
        voice = ep.annotations["user_voice"]
        out.extend((mel, round(t * s.sample_rate) // hop, label, (voice, line)) for t, label, line in silences(ep))
    return out


def design(events, frames: int, silence: float | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(features, labels, groups) of the silences with `frames` frames before them; with `silence` (the
    log-mel of silence, which the episode was before it began) every silence, the early ones padded."""
    if silence is not None:
        events = [
            (np.pad(mel, ((frames, 0), (0, 0)), constant_values=silence), f + frames, *rest) for mel, f, *rest in events
        ]
    kept = [(mel[f - frames : f].ravel(), label, group) for mel, f, label, group in events if f >= frames]
    x = np.stack([k[0] for k in kept]).astype(np.float32)
    return x, np.array([k[1] for k in kept], np.float32), [k[2] for k in kept]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 600) -> tuple[np.ndarray, float]:
    def loss(params):
        w, b = params
        z = x @ w + b
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + l2 * jnp.sum(w * w)

    opt = optax.adam(1e-2)
    params = (jnp.zeros(x.shape[1]), jnp.float32(0.0))

    @jax.jit
    def update(params, state):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(steps):
        params, state = update(params, state)
    return np.asarray(params[0]), float(params[1])


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, groups: list[tuple[str, str]], l2: float) -> float:
    """Accuracy over FOLDS folds, each validating on a share of the voices *and* lines and fitting on events
    of neither: held-out episodes never repeat a training voice or line, so folds that shared them would
    reward memorising them."""
    voices, lines = (sorted({g[i] for g in groups}) for i in (0, 1))
    hits = total = 0
    for fold in range(FOLDS):
        val_voice = np.array([g[0] in voices[fold::FOLDS] for g in groups])
        val_line = np.array([g[1] in lines[fold::FOLDS] for g in groups])
        w, b = fit_logistic(x[~val_voice & ~val_line], y[~val_voice & ~val_line], l2)
        val = val_voice & val_line
        hits += int(np.sum(((x[val] @ w + b) > 0) == y[val]))
        total += int(val.sum())
    return hits / total


def turn_ends_caught(scores: np.ndarray, y: np.ndarray, pause_rate: float) -> float:
    """Share of turn ends scored above the threshold that lets through at most `pause_rate` of pauses."""
    pauses = np.sort(scores[y == 0])
    allowed = int(np.floor(pause_rate * pauses.size))
    threshold = pauses[pauses.size - allowed - 1] if allowed < pauses.size else -np.inf
    return float(np.mean(scores[y == 1] > threshold))


def heldout_row(train_events: int, scores: np.ndarray, y_test: np.ndarray) -> dict:
    """A read-out's numbers on the held-out silences (`scores` > 0: it says the turn has ended)."""
    return {
        "train_events": train_events,
        "heldout_events": len(y_test),
        "turn_end_share": float(y_test.mean()),
        "majority_accuracy": float(max(y_test.mean(), 1 - y_test.mean())),
        "accuracy": float(np.mean((scores > 0) == y_test)),
        "turn_ends_caught_at_10pct_pauses": turn_ends_caught(scores, y_test, PAUSE_FALSE_START_BAR),
    }


class ConvReadout(nn.Module):
    """[N, frames, n_mels] → a logit: two dilated convolutions over time, then the mean over the window
    beside the last frames' features (where the end of a phrase is)."""

    width: int = 32
    dropout: float = 0.3

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.gelu(nn.Conv(self.width, (5,))(x))
        h = nn.gelu(nn.Conv(self.width, (5,), kernel_dilation=(2,))(h))
        h = nn.gelu(nn.Conv(self.width, (5,), kernel_dilation=(4,))(h))
        z = jnp.concatenate([h.mean(axis=1), h[:, -4:].reshape(h.shape[0], -1)], axis=-1)
        z = nn.Dropout(self.dropout, deterministic=not train)(z)
        return nn.Dense(1)(z)[:, 0]


def fit_conv(x, y, steps: int, validation=None, seed: int = 0):
    """Fit `ConvReadout` by AdamW on minibatches; with `validation` (x, y), also the turn ends it catches at
    ≤ 10% pauses every CONV_EVAL_EVERY steps. Returns (predict, [(step, caught)])."""
    model = ConvReadout()
    params = model.init(jax.random.key(seed), x[:2])
    opt = optax.adamw(1e-3, weight_decay=1e-2)
    state = opt.init(params)

    @jax.jit
    def update(params, state, xb, yb, rng):
        def loss(p):
            z = model.apply(p, xb, train=True, rngs={"dropout": rng})
            return jnp.mean(jnp.logaddexp(0.0, z) - yb * z)

        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    score = jax.jit(lambda p, xb: model.apply(p, xb))

    def predict(params, xs):
        return np.concatenate([np.asarray(score(params, xs[i : i + 1024])) for i in range(0, len(xs), 1024)])

    rng = np.random.default_rng(seed)
    curve = []
    for step in range(1, steps + 1):
        batch = rng.choice(len(y), min(CONV_BATCH, len(y)), replace=False)
        params, state = update(params, state, x[batch], y[batch], jax.random.key(step))
        if validation is not None and step % CONV_EVAL_EVERY == 0:
            curve.append((step, turn_ends_caught(predict(params, validation[0]), validation[1], PAUSE_FALSE_START_BAR)))
    return (lambda xs: predict(params, xs)), curve


def measure_conv(cfg, train_events, heldout_events, window_ms: int) -> dict:
    frames = window_ms * cfg.stream.sample_rate // 1000 // features.hop_samples(cfg.stream)
    x, y, groups = design(train_events, frames, cfg.stream.dmel_min)
    x_test, y_test, _ = design(heldout_events, frames, cfg.stream.dmel_min)
    n_mels = cfg.stream.n_mels
    x, x_test = x.reshape(len(x), frames, n_mels), x_test.reshape(len(x_test), frames, n_mels)
    mean, std = x.mean((0, 1)), x.std((0, 1)) + 1e-3  # per mel channel
    x, x_test = (x - mean) / std, (x_test - mean) / std
    # the training length: on one fold of voices and lines (as cross_validated_accuracy cuts them)
    voices, lines = (sorted({g[i] for g in groups}) for i in (0, 1))
    val_voice = np.array([g[0] in voices[::FOLDS] for g in groups])
    val_line = np.array([g[1] in lines[::FOLDS] for g in groups])
    fit = ~val_voice & ~val_line
    val = val_voice & val_line
    _, curve = fit_conv(x[fit], y[fit], CONV_STEPS, validation=(x[val], y[val]))
    best_steps = max(curve, key=lambda c: (c[1], -c[0]))[0]
    predict, _ = fit_conv(x, y, best_steps)
    scores = predict(x_test)
    row = {"window_ms": window_ms, "readout": "conv", "steps": best_steps, "validation_curve": curve}
    return row | heldout_row(len(y), scores, y_test)


def measure(cfg, train_events, heldout_events, window_ms: int) -> dict:
    frames = window_ms * cfg.stream.sample_rate // 1000 // features.hop_samples(cfg.stream)
    x, y, groups = design(train_events, frames)
    x_test, y_test, _ = design(heldout_events, frames)
    mean, std = x.mean(0), x.std(0) + 1e-3
    x, x_test = (x - mean) / std, (x_test - mean) / std
    scored = [(cross_validated_accuracy(x, y, groups, l2), l2) for l2 in L2_STRENGTHS]
    best_l2 = max(scored)[1]
    w, b = fit_logistic(x, y, best_l2)
    scores = x_test @ w + b
    return {"window_ms": window_ms, "readout": "linear", "l2": best_l2} | heldout_row(len(y), scores, y_test)


def model_scores(workdir: str, episodes: int, clips) -> tuple[np.ndarray, np.ndarray, int]:
    """The checkpoint's teacher-forced speak probability at each held-out silence (see the module doc)."""
    cfg, params, step = checkpoint.load_params(workdir)
    s = cfg.stream
    pad_bias = step_lib.pad_logit_bias(cfg.train.pad_weight) if cfg.serve.calibrate_pad else 0.0

    @jax.jit
    def text_logits(params, batch):
        cache = cache_lib.init_cache(cfg.model, 1, batch["kind"].shape[1])
        hidden = step_lib.step(params, cache, batch, cfg=cfg)[0]
        return step_lib.text_logits(params, hidden, cfg=cfg)

    scores, labels = [], []
    for ep in turn_taking_episodes(cfg, "heldout", episodes, clips):
        (window,) = render.episode_windows(ep, s, ep.num_chunks)
        logits = np.asarray(text_logits(params, {k: v[None] for k, v in window.items() if k != "loss_mask"}))[0]
        slots = np.nonzero(window["kind"] == stream.Kind.TEXT_OUT)[0]
        first = slots.reshape(ep.num_chunks, s.text_out_slots)[:, 0]
        calibrated = logits[first - 1]  # the token before a slot predicts it
        calibrated[:, tokenizer.PAD] += pad_bias
        speak = 1.0 - np.asarray(jax.nn.softmax(calibrated, axis=-1))[:, tokenizer.PAD]
        silent = window["text"][first] == tokenizer.PAD
        for t, label, _ in silences(ep):
            e = end_chunk(t, s)
            window_chunks = [e + 1] + ([e + 2] if silent[e + 1] else [])
            scores.append(max(speak[c] for c in window_chunks if c < ep.num_chunks))
            labels.append(label)
    return np.array(scores), np.array(labels), step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--train-episodes", type=int, default=1500)
    parser.add_argument("--heldout-episodes", type=int, default=150)
    parser.add_argument(
        "--features",
        choices=("log_mel", "dmel"),
        default="log_mel",
        help="what the read-out sees: the log-mel, or its dMel quantisation (the model's input)",
    )
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. stream.dmel_levels=32")
    parser.add_argument("--conv", action="store_true", help="add the convolutional read-out over longer windows")
    parser.add_argument("--workdir", default=None, help="also score this checkpoint's speak decision, teacher-forced")
    parser.add_argument("--out", default="benchmarks/results/turn_end_cue.json")
    args = parser.parse_args()
    cfg = config_lib.validate(config_lib.override(config_lib.preset(args.preset), args.set))
    clips = pipeline.clip_source(cfg, progress=True)
    start = time.perf_counter()
    train_events = silence_onsets(cfg, "train", args.train_episodes, clips, args.features)
    heldout_events = silence_onsets(cfg, "heldout", args.heldout_episodes, clips, args.features)
    rows = [measure(cfg, train_events, heldout_events, ms) for ms in WINDOWS_MS]
    if args.conv:
        rows += [measure_conv(cfg, train_events, heldout_events, ms) for ms in CONV_WINDOWS_MS]
    print(
        f"\nturn_taking silences: {rows[0]['train_events']} training, {rows[0]['heldout_events']} held out; "
        f"features: {args.features}" + (f" ({cfg.stream.dmel_levels} levels)" if args.features == "dmel" else "")
    )
    print(
        "| read-out | audio before the silence | held-out accuracy | majority class "
        "| turn ends caught at ≤ 10% pauses |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['readout']} | {r['window_ms']} ms | {r['accuracy']:.1%} | {r['majority_accuracy']:.1%} "
            f"| {r['turn_ends_caught_at_10pct_pauses']:.1%} |"
        )
    model = None
    if args.workdir:
        scores, labels, step = model_scores(args.workdir, args.heldout_episodes, clips)
        model = {
            "workdir": args.workdir,
            "step": step,
            "heldout_events": len(labels),
            "mean_at_turn_ends": float(scores[labels == 1].mean()),
            "mean_at_pauses": float(scores[labels == 0].mean()),
            "accuracy": float(np.mean((scores > 0.5) == labels)),
            "turn_ends_caught_at_10pct_pauses": turn_ends_caught(scores, labels, PAUSE_FALSE_START_BAR),
        }
        print(
            f"| model at step {step}, teacher-forced | | {model['accuracy']:.1%} | | "
            f"{model['turn_ends_caught_at_10pct_pauses']:.1%} |\n"
            f"mean speak probability: {model['mean_at_turn_ends']:.3f} at turn ends, "
            f"{model['mean_at_pauses']:.3f} in pauses"
        )
    result = {
        "benchmark": "turn_end_cue",
        "preset": args.preset,
        "features": args.features,
        "sets": args.set,
        "machine": platform.platform(),
        "jax": jax.__version__,
        "seconds": time.perf_counter() - start,
        "rows": rows,
        "model": model,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
