"""Cue-triggered speech: "tell me when a red square appears" / "… when you hear a beep".

The request is spoken or typed, and the model acknowledges it by the reply rule ("okay"). Some time
after that the cue happens: a red square that appears at a frame time (perceivable in the chunk that
carries that frame), or a 150 ms 1 kHz beep in the user's audio (perceivable in the chunk holding its
last sample). The model responds from the next chunk on, and says nothing else before. With video or the
camera off every cue is a beep. Requests repeat while whole exchanges fit.

Annotations (beyond those every scenario writes): `cues` [{kind: "visual" | "audio", time, ack_end,
perceived_chunk, onset_chunk}] — time is the frame time the red square appears at, or the beep's start;
ack_end: when the acknowledgement's speech ends; onset_chunk = perceived_chunk + 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax.audio.clip import Clip
from interaction_jax.config import StreamConfig
from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, ScenarioContext, frame_times
from interaction_jax.data.scenarios.common import (
    Acknowledgement,
    EpisodeBuilder,
    Request,
    beep,
    first_that_fits,
    pick,
    too_short,
)
from interaction_jax.data.scenarios.scenario import Column, Marker, Scenario
from interaction_jax.data.scenarios.scoring import (
    MISS_CHUNKS,
    Metrics,
    any_active,
    end_chunk,
    first_active,
    last_chunk,
    mean,
    text_active,
    user_utterances,
)
from interaction_jax.video import scene as video_scene

NAME = "cue_speak"
NUMBER = 4  # its place in the registry (`Scenario.number`)
FIRST_START_S = (0.2, 1.5)
CUE_DELAY_S = (0.5, 6.0)  # from the end of the request to the cue (and a chunk after the acknowledgement)
VISUAL_PROBABILITY = 0.5  # when video is on
TYPED_PROBABILITY = 0.5
NEXT_REQUEST_S = (0.5, 1.5)
CUE_VISIBLE_FRAMES = 2  # the red square stays this many frame intervals, then disappears


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str  # "visual" | "audio"
    request: Request
    acknowledgement: Acknowledgement
    cue_sample: int  # when the square appears (a frame's start) or the beep starts
    perceived_chunk: int
    response: Clip

    @property
    def onset_chunk(self) -> int:
        return self.perceived_chunk + 1


def _draw(b: EpisodeBuilder, start: int) -> Plan | None:
    kind = "visual" if b.ctx.sees and b.rng.random() < VISUAL_PROBABILITY else "audio"
    typed = bool(b.rng.random() < TYPED_PROBABILITY)
    request = b.plan_request(pick(b.rng, corpus.user_lines(f"cue_{kind}_request", b.ctx.split)), start, typed)
    response = b.model_clip(pick(b.rng, corpus.CUE_RESPONSES[kind]))
    ack = b.plan_acknowledgement(request)
    earliest = max(request.end + b.samples(CUE_DELAY_S[0]), b.after_acknowledgement(ack))
    latest = request.end + b.samples(CUE_DELAY_S[1])
    last_perceived = b.last_onset(response) - 1  # the response must fit after it
    if kind == "visual":
        frame_chunks = [
            k
            for k in range(0, b.ctx.num_chunks, b.cfg.video_every)
            if earliest <= b.chunk_start(k) <= latest and k <= last_perceived
        ]
        if not frame_chunks:
            return None
        chunk = pick(b.rng, frame_chunks)
        return Plan(kind, request, ack, b.chunk_start(chunk), chunk, response)
    tone = beep(b.sample_rate).size
    latest = min(latest, b.chunk_start(last_perceived + 1) - tone)  # the beep's last sample by last_perceived
    if latest < earliest:
        return None
    cue = int(b.rng.integers(earliest, latest + 1))
    return Plan(kind, request, ack, cue, last_chunk(cue + tone, b.cfg), response)


def _show_red_square(b: EpisodeBuilder, frame_chunk: int) -> tuple[float, float]:
    """Add the visual cue to the scene, appearing exactly at the frame of `frame_chunk`; (from, until) s."""
    times = frame_times(b.cfg, b.ctx.num_chunks)
    frame = frame_chunk // b.cfg.video_every
    appear_s = float(times[frame])  # the very value the frame is rendered at, so the frame shows it
    until_s = appear_s + CUE_VISIBLE_FRAMES * b.cfg.video_every * b.chunk / b.sample_rate
    b.scene = video_scene.with_cue(
        b.scene, appear_s, b.scene_rng, b.cfg.frame_height, b.cfg.frame_width, until_s=until_s
    )
    return appear_s, until_s


def make(seed: int, ctx: ScenarioContext) -> Episode:
    b = EpisodeBuilder(NAME, NUMBER, seed, ctx)
    start = b.uniform_sample(*FIRST_START_S)
    cues = []
    while (plan := first_that_fits(_draw, b, start)) is not None:
        b.place_request(plan.request)
        b.say_acknowledgement(plan.acknowledgement)
        next_start = 0
        if plan.kind == "visual":
            cue_s, until_s = _show_red_square(b, plan.perceived_chunk)
            next_start = b.samples(until_s)  # the next request comes after the square has gone
        else:
            b.add_beep(plan.cue_sample)
            cue_s = b.seconds(plan.cue_sample)
        _, response_end = b.say_model(plan.response, plan.onset_chunk, choices=corpus.CUE_RESPONSES[plan.kind])
        cues.append(
            {
                "kind": plan.kind,
                "time": cue_s,
                "ack_end": b.seconds(plan.acknowledgement.end),
                "perceived_chunk": plan.perceived_chunk,
                "onset_chunk": plan.onset_chunk,
            }
        )
        start = max(next_start, response_end + b.samples(b.rng.uniform(*NEXT_REQUEST_S)))
    if not cues:
        raise too_short(NAME, ctx, "a cue request, the cue and the response")
    b.annotate(cues=cues)
    return b.build()


def metrics(annotations: dict, text: np.ndarray, s: StreamConfig) -> Metrics:
    """Per cue (p = perceived_chunk): `cue_latency_chunks` = onset − p for the first active chunk in
    [p, p+MISS_CHUNKS] (the data: 1); `cue_hit` = onset within onset_chunk ± 1; `cue_missed`;
    `cue_premature` = active between the end of the request's acknowledgement (`ack_end`; of the request
    in episodes without one) and p (the data says nothing there)."""
    flags = text_active(text)
    utterances = user_utterances(annotations)
    latency, hits, missed, premature = [], [], [], []
    for cue in annotations.get("cues", []):
        p, onset = int(cue["perceived_chunk"]), int(cue["onset_chunk"])
        before = [u["end"] for u in utterances if u["start"] < cue["time"]]
        waiting = max(before[-1], cue.get("ack_end", 0.0)) if before else cue.get("ack_end")
        wait_from = end_chunk(waiting, s) + 1 if waiting is not None else 0
        premature.append(any_active(flags, wait_from, p - 1))
        k = first_active(flags, p, p + MISS_CHUNKS)
        missed.append(k is None)
        hits.append(k is not None and abs(k - onset) <= 1)
        if k is not None:
            latency.append(k - p)
    return {
        "cue_latency_chunks": mean(latency),
        "cue_hit": mean(hits),
        "cue_missed": mean(missed),
        "cue_premature": mean(premature),
        "n_cues": len(missed),
    }


def event_markers(annotations: dict, s: StreamConfig) -> list[Marker]:
    return [(float(cue["time"]), f"{cue['kind']} cue") for cue in annotations.get("cues", [])]


SCENARIO = Scenario(
    name=NAME,
    number=NUMBER,
    make=make,
    min_seconds=9.0,
    metrics=metrics,
    columns=(
        Column("cue_latency_chunks", "cue → onset", "chunks"),
        Column("cue_hit", "hit ±1 chunk", "pct"),
        Column("cue_premature", "speaks before the cue", "pct"),
    ),
    event_markers=event_markers,
    annotation_keys={"ack_end": "time", "onset_chunk": "chunk", "perceived_chunk": "chunk", "time": "time"},
)
