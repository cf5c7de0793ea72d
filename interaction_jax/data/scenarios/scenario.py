"""`Scenario`: everything the rest of the project knows about one scenario, declared by its own module.

Each module of `data/scenarios/` that makes episodes ends with `SCENARIO = Scenario(...)`; the package
collects them into its registry (`data.scenarios.get`, `names`), and the pipeline, the config check,
evaluation, the report and the previews read them from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import numpy as np

from interaction_jax.config import StreamConfig
from interaction_jax.data.episode import Episode, ScenarioContext
from interaction_jax.data.scenarios.scoring import Metrics

Marker = tuple[float, str]  # a timeline marker: (stream seconds, label)
AnnotationKind = Literal["time", "chunk", "plain"]  # what a number in an episode's annotations is


class Column(NamedTuple):
    """One cell of the report's row: metric `key` shown as `label`, in `unit` ("pct", "chunks", "s" or
    "count": a 0/1 per episode shown as correct/episodes)."""

    key: str
    label: str
    unit: str


def no_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return []


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario: how its episodes are made and how a model's behaviour in them is scored and shown.

    number: its place in the registry, 0, 1, …: it keys the episodes' random streams, is the training
        windows' `task` id and orders the held-out evaluation episodes; a new scenario takes the next one.
    make(seed, ctx): the episode, a pure function of (seed, ctx); raises `EpisodeTooShort` when nothing fits.
    min_seconds: the episode length a whole exchange needs (the config check refuses shorter episodes).
    needs_video: what the model must see is only in the video (refused, or left out of evaluation,
        when stream.video is off).
    metrics(annotations, text, s): its own behaviour metrics of TEXT_OUT ids `text` [n, slots] (keys fixed).
    columns: what the report's row shows of them (every row also shows the common metrics).
    event_markers(annotations, s): timeline markers at what happens (cues, targets, barge-ins).
    due_markers(annotations, s): markers where the data has the model act (evaluation timelines add them).
    annotation_keys: what each number of its own annotation keys is (those every scenario writes are
        `scenarios.COMMON_ANNOTATION_KEYS`): "time" (stream seconds), "chunk" (a chunk index) or "plain"
        (neither): what moves, and how, when an edit moves the episode's time line (`probing.edits`).
    """

    name: str
    number: int
    make: Callable[[int, ScenarioContext], Episode]
    min_seconds: float
    metrics: Callable[[dict, np.ndarray, StreamConfig], Metrics]
    columns: tuple[Column, ...]
    needs_video: bool = False
    event_markers: Callable[[dict, StreamConfig], list[Marker]] = no_markers
    due_markers: Callable[[dict, StreamConfig], list[Marker]] = no_markers
    annotation_keys: Mapping[str, AnnotationKind] = dataclasses.field(default_factory=dict)
