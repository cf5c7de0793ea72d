"""A new scenario is one record: registered, it flows through the config check, the pipeline, the metrics
and the report with nothing else edited (docs/data.md, "Adding a scenario")."""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax import config as config_lib
from interaction_jax import tokenizer
from interaction_jax.data import pipeline, render, scenarios
from interaction_jax.data.bank import LiveClips
from interaction_jax.data.scenarios.common import EpisodeBuilder, too_short
from interaction_jax.data.scenarios.scenario import Column, Scenario
from interaction_jax.data.scenarios.scoring import any_active, mean, text_active
from interaction_jax.eval import behaviour, report
from interaction_jax.stream import chunk_seconds

NAME = "greeting"
CFG = config_lib.validate(
    config_lib.override(
        config_lib.preset("tiny"),
        [f"data.scenarios=[{NAME}]", "data.weights=[1]", "data.episode_chunks=20", "train.window_chunks=10"],
    )
)
S = CFG.stream


def greeting(number: int) -> Scenario:
    """The user types "hello"; the model says "hi" by the reply rule once the text has arrived."""

    def make(seed, ctx):
        b = EpisodeBuilder(NAME, number, seed, ctx)
        start = b.uniform_sample(0.2, 1.0)
        typed_end = b.type_user("hello", start)
        onset, reply = b.reply_chunk(typed_end), b.model_clip("hi")
        if not b.model_fits(onset, reply):
            raise too_short(NAME, ctx, "a greeting and its reply")
        b.say_model(reply, onset)
        b.annotate(greeting_onset_chunk=onset, typed_at=b.seconds(start))
        return b.build()

    def metrics(annotations, text, s):
        onset = annotations["greeting_onset_chunk"]
        return {"greeted": mean([any_active(text_active(text), onset - 1, onset + 1)])}

    return Scenario(
        name=NAME,
        number=number,
        make=make,
        min_seconds=3.0,
        metrics=metrics,
        columns=(Column("greeted", "greets back ±1 chunk", "pct"),),
        event_markers=lambda a, s: [(a["typed_at"], "hello typed")],
        due_markers=lambda a, s: [(a["greeting_onset_chunk"] * chunk_seconds(s), "greeting due")],
        annotation_keys={"greeting_onset_chunk": "chunk", "typed_at": "time"},
    )


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(scenarios, "REGISTRY", dict(scenarios.REGISTRY))  # the real registry comes back after
    return scenarios.register(greeting(len(scenarios.names())))


def test_a_registered_scenario_flows_through_pipeline_metrics_and_report(toy):
    clips = LiveClips(S.sample_rate)
    assert scenarios.names()[-1] == NAME and scenarios.get(NAME) is toy
    scenarios.check_mix(CFG)
    short = config_lib.override(CFG, ["data.episode_chunks=10"])
    with pytest.raises(config_lib.ConfigError, match=r"3\.0 s greeting needs .* use at least 15 chunks"):
        scenarios.check_mix(short)

    # the pipeline: the mix draws it, its windows carry its task id, the held-out split cycles through it
    window = next(iter(pipeline.windows(CFG, clips=clips, num_episodes=1)))
    assert int(window["task"]) == toy.number
    assert pipeline.make_episode(CFG, "heldout", 0, clips).scenario == NAME

    # evaluation: its held-out episodes, its metrics next to the common ones, its row, its markers
    assert report.default_scenarios(CFG) == (NAME,)
    assert report.eval_index(NAME, 1) == len(scenarios.names()) + toy.number
    ep = report.eval_episode(CFG, NAME, 0, clips)
    payloads, _ = render.chunk_payloads(ep, S)
    reference = np.stack([p.text_out for p in payloads])
    data = behaviour.episode_metrics(NAME, ep.annotations, reference, S, reference_text=reference)
    silent = behaviour.episode_metrics(NAME, ep.annotations, np.full_like(reference, tokenizer.PAD), S)
    assert data["greeted"] == 1.0 and data["text_agreement"] == 1.0 and silent["greeted"] == 0.0
    cells = report.row_cells(NAME, behaviour.aggregate([silent]), behaviour.aggregate([data]))
    table = report.format_table([report.ScenarioRow(NAME, 1, {}, {}, cells)])
    assert f"| {NAME} | 1 | greets back ±1 chunk 0% ±0 (data: 100%); text-onset agreement" in table
    onset_s = ep.annotations["greeting_onset_chunk"] * chunk_seconds(S)
    assert report.due_markers(NAME, ep.annotations, S) == [
        (ep.annotations["typed_at"], "hello typed"),
        (onset_s, "greeting due"),
    ]
    # what its numbers are, for the edits that move an episode's time line (probing.edits)
    kinds = scenarios.annotation_kinds()
    assert kinds["greeting_onset_chunk"] == "chunk" and kinds["typed_at"] == "time"
