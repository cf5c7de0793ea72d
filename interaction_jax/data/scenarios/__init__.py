"""The scenario registry: every module here that ends with `SCENARIO = Scenario(...)` is one scenario.

`get(name)` is its record (how its episodes are made, scored, shown: `scenario.Scenario`), `names()` all
of them in registry order (`Scenario.number`), `make_episode(name, seed, ctx)` one checked `Episode`, and
`check_mix(cfg)` refuses a config whose `data.scenarios` the registry cannot make. The registry is
collected from the package's modules when it is first imported, so a new scenario is a new module and
nothing else. Shared rules (reply timing, chunk-aligned model speech, noise, video background) live in
`common.py`, what the metrics are built from in `scoring.py`, the corpus in `data/corpus.py`.

Episodes must be long enough for a whole exchange: at its `min_seconds` (9 s, 45 chunks of 200 ms, for
every scenario so far) a scenario fits; shorter ones raise `EpisodeTooShort` when nothing fits
(interruption, the longest exchange, starts to fail below about 8 s). Longer episodes hold several
exchanges.

Annotations (JSON-able; times in stream seconds, chunk indices as ints). Every scenario writes:

- `user_speech`: [[start, end], …] voiced stretches of the user, pauses excluded (typed text is not speech).
- `model_speech`: [[start, end], …] the model's utterances as spoken (a cut one ends at the cut).
- `user_utterances`: [{start, end, text, pauses: [[s, e], …], typed}] — for typed text, start is when
  typing begins and end is the end of the chunk in which its last token lands.
- `model_utterances`: [{start, end, text, cut}].
- `model_lines`: [{start, choices}] every line the model says or could say, in order: the lines the scenario
  drew it from at random ("" where it may say nothing), cut like the utterance; the words CER scores
  against the nearest of them (`common.EpisodeBuilder.could_say`).
- `noise_level`: amplitude of the user's background noise; `user_voice`: the user's Voice.name.

Each scenario's own keys are listed in its module's docstring.
"""

from __future__ import annotations

import importlib
import math
import pkgutil

from interaction_jax.config import Config, ConfigError
from interaction_jax.data.episode import Episode, ScenarioContext, check_episode
from interaction_jax.data.scenarios.common import EpisodeTooShort
from interaction_jax.data.scenarios.scenario import AnnotationKind, Column, Scenario

REGISTRY: dict[str, Scenario] = {}  # name → record, in number order
# What each number in the annotations every scenario writes is (a scenario declares its own keys'
# in `Scenario.annotation_keys`); a number anywhere below a key (a list of spans) is of that key's kind.
COMMON_ANNOTATION_KEYS: dict[str, AnnotationKind] = {
    **dict.fromkeys(("start", "end", "user_speech", "model_speech", "pauses"), "time"),
    "noise_level": "plain",
}


def register(scenario: Scenario) -> Scenario:
    """Add `scenario` to the registry; its number must be the next one (numbers run 0, 1, … without gaps)."""
    if scenario.name in REGISTRY:
        raise ValueError(f"scenario {scenario.name!r} is registered twice")
    if scenario.number != len(REGISTRY):
        taken = {s.number: s.name for s in REGISTRY.values()}
        raise ValueError(
            f"scenario {scenario.name!r} has number {scenario.number}, but the next free number is "
            f"{len(REGISTRY)} (taken: {taken}); numbers run 0, 1, … without gaps"
        )
    REGISTRY[scenario.name] = scenario
    return scenario


def _collect() -> None:
    """Register the `SCENARIO` of every module of this package, in number order."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        record = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SCENARIO", None)
        if isinstance(record, Scenario):
            found.append(record)
    for record in sorted(found, key=lambda s: s.number):
        register(record)


def names() -> tuple[str, ...]:
    """Every registered scenario's name, in registry order (index = `Scenario.number`)."""
    return tuple(REGISTRY)


def get(name: str) -> Scenario:
    """The record of scenario `name`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown scenario {name!r}; use one of {list(REGISTRY)}")
    return REGISTRY[name]


def annotation_kinds() -> dict[str, AnnotationKind]:
    """What each numeric annotation key of every registered scenario holds (`Scenario.annotation_keys` and
    `COMMON_ANNOTATION_KEYS`). A key means one thing in every scenario: a clash raises ValueError."""
    kinds = dict(COMMON_ANNOTATION_KEYS)
    for record in REGISTRY.values():
        for key, kind in record.annotation_keys.items():
            if kinds.setdefault(key, kind) != kind:
                raise ValueError(
                    f"annotation {key!r} of scenario {record.name!r} is a {kind}, elsewhere a {kinds[key]}"
                )
    return kinds


def make_episode(name: str, seed: int, ctx: ScenarioContext) -> Episode:
    """Episode `seed` of scenario `name`, checked against the stream config."""
    return check_episode(get(name).make(seed, ctx), ctx.stream)


def check_mix(cfg: Config) -> None:
    """Refuse a config whose `data.scenarios` this registry cannot make: an unknown name, episodes shorter
    than a scenario's `min_seconds`, or a scenario that needs video in the mix (weight > 0) with
    stream.video off. Raises `ConfigError` naming the key and the fix.

    The config itself holds scenario names as strings and cannot know the registry (the config package imports
    nothing of data/), so this runs where a config meets the data: the CLI after `config.validate`, and
    `train`, `evaluate` and the data pipeline before they make anything.
    """
    d, s = cfg.data, cfg.stream
    for name in d.scenarios:
        if name not in REGISTRY:
            raise ConfigError("data.scenarios", f"unknown scenario {name!r}", f"use names from {list(REGISTRY)}")
    longest = max((REGISTRY[name] for name in d.scenarios), key=lambda sc: sc.min_seconds, default=None)
    if longest is not None and d.episode_chunks * s.chunk_ms < 1000 * longest.min_seconds:
        need = math.ceil(1000 * longest.min_seconds / s.chunk_ms)
        raise ConfigError(
            "data.episode_chunks",
            f"{d.episode_chunks} chunks of {s.chunk_ms} ms is shorter than the {longest.min_seconds} s "
            f"{longest.name} needs for a whole exchange",
            f"use at least {need} chunks",
        )
    for name, weight in zip(d.scenarios, d.weights, strict=True):
        if weight > 0 and REGISTRY[name].needs_video and not s.video:
            raise ConfigError(
                "data.scenarios",
                f"{name} needs the video (what the model must see is only there), but stream.video is off",
                f"drop {name}",
            )


_collect()

__all__ = ["REGISTRY", "Column", "EpisodeTooShort", "Scenario", "check_mix", "get", "make_episode", "names", "register"]
