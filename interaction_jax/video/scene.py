"""Synthetic video scenes: frozen descriptions of shapes as functions of time, and a numpy renderer.

A `Scene` is a flat background plus four kinds of object, all pure functions of time so any frame can be
rendered on its own (the data pipeline renders one frame per second of an episode, in any order):

- `Shape`: a moving distractor that bounces off the frame edges (closed-form reflection, no simulation);
- `ColorChange`: from a time on, a `Shape` has a new colour (a colour-change cue);
- `Repetition`: an object that rests, performs `count` out-and-back motions, then rests again;
- `Appear`: a static shape visible in [time_s, until_s), e.g. the visual cue "a red square appears".

Drawing order is shapes, then repetitions, then appears, each in list order, so a cue is never hidden.
Pixels are sampled at their centres, (col + 0.5, row + 0.5); there is no anti-aliasing. A square covers
the half-open box [x - size/2, x + size/2) × [y - size/2, y + size/2), so an integer size at a
pixel-aligned centre covers exactly size × size pixels.

Red is reserved for the visual cue: distractors (`random_scene`) and repeating objects never look like
`CUE_RED`, so a scenario that says "a red square appears" is unambiguous.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KINDS = ("circle", "square", "triangle")
CUE_RED = (220, 30, 30)
# Saturated colours that read as "the object that moves on purpose"; none is reddish.
_REPETITION_PALETTE = ((250, 220, 40), (40, 210, 230), (60, 200, 80), (230, 80, 230), (60, 110, 250), (245, 245, 245))
_MIN_CONTRAST = 150  # L1 distance between an object's colour and the background, so objects stand out
_PLACEMENT_TRIES = 50

Color = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------
# Validation helpers


def _check_color(name: str, color) -> Color:
    """A colour as a tuple of three Python ints in [0, 255] (lists and arrays are accepted)."""
    values = tuple(np.asarray(color).reshape(-1).tolist()) if not isinstance(color, tuple) else color
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"{name} must be three integers in [0, 255] (r, g, b), got {color!r}")
    return tuple(int(v) for v in values)


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_size(name: str, size) -> float:
    size = _check_finite(name, size)
    if size <= 0:
        raise ValueError(f"{name} must be > 0 pixels, got {size}")
    return size


def _check_kind(name: str, kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def _check_frame_side(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    return int(value)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


# ----------------------------------------------------------------------------------------------
# Scene description


@dataclasses.dataclass(frozen=True)
class Shape:
    """A filled shape moving at constant velocity (px/s) from centre (x, y) at t=0, bouncing off the edges.

    size is the diameter of a circle, the side of a square, the base and height of an upward triangle.
    """

    kind: str
    color: Color
    size: float
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0

    def __post_init__(self):
        _check_kind("Shape.kind", self.kind)
        object.__setattr__(self, "color", _check_color("Shape.color", self.color))
        object.__setattr__(self, "size", _check_size("Shape.size", self.size))
        for field in ("x", "y", "vx", "vy"):
            object.__setattr__(self, field, _check_finite(f"Shape.{field}", getattr(self, field)))


@dataclasses.dataclass(frozen=True)
class ColorChange:
    """From `time_s` on (inclusive), shape number `shape` of the scene is drawn in `color`."""

    shape: int
    time_s: float
    color: Color

    def __post_init__(self):
        if isinstance(self.shape, bool) or not isinstance(self.shape, (int, np.integer)) or self.shape < 0:
            raise ValueError(f"ColorChange.shape must be a shape index >= 0, got {self.shape!r}")
        object.__setattr__(self, "shape", int(self.shape))
        object.__setattr__(self, "time_s", _check_finite("ColorChange.time_s", self.time_s))
        object.__setattr__(self, "color", _check_color("ColorChange.color", self.color))


@dataclasses.dataclass(frozen=True)
class Appear:
    """A static shape centred at (x, y), visible for times in [time_s, until_s)."""

    kind: str
    color: Color
    size: float
    x: float
    y: float
    time_s: float
    until_s: float = math.inf

    def __post_init__(self):
        _check_kind("Appear.kind", self.kind)
        object.__setattr__(self, "color", _check_color("Appear.color", self.color))
        object.__setattr__(self, "size", _check_size("Appear.size", self.size))
        for field in ("x", "y", "time_s"):
            object.__setattr__(self, field, _check_finite(f"Appear.{field}", getattr(self, field)))
        if isinstance(self.until_s, bool) or not isinstance(self.until_s, (int, float, np.integer, np.floating)):
            raise ValueError(f"Appear.until_s must be a number (math.inf for 'stays'), got {self.until_s!r}")
        if not self.until_s > self.time_s:  # also rejects NaN
            raise ValueError(
                f"Appear.until_s ({self.until_s}) must be after time_s ({self.time_s}): it would never show"
            )
        object.__setattr__(self, "until_s", float(self.until_s))


@dataclasses.dataclass(frozen=True)
class Repetition:
    """An object resting at (x, y) that, from `start_s`, performs `count` out-and-back motions to (x+dx, y+dy).

    Each repetition lasts `period_s` and follows a half-cosine profile (displacement fraction
    (1 - cos 2πφ) / 2 for phase φ in [0, 1)), so the motion is smooth and returns to rest exactly
    at start_s + k·period_s for k = 1 … count; after the last one the object rests again.
    """

    kind: str
    color: Color
    size: float
    x: float
    y: float
    dx: float
    dy: float
    start_s: float
    period_s: float
    count: int

    def __post_init__(self):
        _check_kind("Repetition.kind", self.kind)
        object.__setattr__(self, "color", _check_color("Repetition.color", self.color))
        object.__setattr__(self, "size", _check_size("Repetition.size", self.size))
        for field in ("x", "y", "dx", "dy", "start_s"):
            object.__setattr__(self, field, _check_finite(f"Repetition.{field}", getattr(self, field)))
        object.__setattr__(self, "period_s", _check_size("Repetition.period_s", self.period_s))
        if isinstance(self.count, bool) or not isinstance(self.count, (int, np.integer)) or self.count < 0:
            raise ValueError(f"Repetition.count must be an integer >= 0, got {self.count!r}")
        object.__setattr__(self, "count", int(self.count))

    @property
    def end_s(self) -> float:
        """When the last repetition has returned to rest."""
        return self.start_s + self.count * self.period_s


@dataclasses.dataclass(frozen=True)
class Scene:
    """A flat background and the objects drawn over it (shapes, then repetitions, then appears)."""

    background: Color
    shapes: tuple[Shape, ...] = ()
    color_changes: tuple[ColorChange, ...] = ()
    appears: tuple[Appear, ...] = ()
    repetitions: tuple[Repetition, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "background", _check_color("Scene.background", self.background))
        for field, cls in (
            ("shapes", Shape),
            ("color_changes", ColorChange),
            ("appears", Appear),
            ("repetitions", Repetition),
        ):
            items = tuple(getattr(self, field))
            for i, item in enumerate(items):
                if not isinstance(item, cls):
                    raise ValueError(f"Scene.{field}[{i}] must be a {cls.__name__}, got {type(item).__name__}")
            object.__setattr__(self, field, items)
        for i, change in enumerate(self.color_changes):
            if change.shape >= len(self.shapes):
                raise ValueError(
                    f"Scene.color_changes[{i}].shape = {change.shape}, but the scene has {len(self.shapes)} shapes"
                )


# ----------------------------------------------------------------------------------------------
# Motion as closed-form functions of time


def _reflect(u: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold free positions `u` into [low, high] as if reflected at both walls (a triangle wave, continuous).

    A shape too big for the frame (low > high) has nowhere to move, so it is pinned midway.
    """
    span = high - low
    if span <= 0:
        return np.full_like(u, (low + high) / 2)
    m = np.mod(u - low, 2 * span)
    return low + np.where(m <= span, m, 2 * span - m)


def shape_position(shape: Shape, times_s, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) of a bouncing `Shape` at each time: float64 arrays shaped like `times_s`.

    The centre is reflected within [size/2, width - size/2] × [size/2, height - size/2], so the shape
    stays inside the frame at any time; a start position outside that range is folded into it.
    """
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    t = np.asarray(times_s, np.float64)
    half = shape.size / 2
    x = _reflect(shape.x + shape.vx * t, half, width - half)
    y = _reflect(shape.y + shape.vy * t, half, height - half)
    return x, y


def repetition_displacement(rep: Repetition, times_s) -> np.ndarray:
    """Displacement fraction in [0, 1] at each time: 0 at rest, 1 at the far point (x+dx, y+dy)."""
    phase = (np.asarray(times_s, np.float64) - rep.start_s) / rep.period_s
    moving = (phase > 0) & (phase < rep.count)
    return np.where(moving, (1 - np.cos(2 * np.pi * phase)) / 2, 0.0)


def repetition_position(rep: Repetition, times_s) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) of a repeating object at each time."""
    fraction = repetition_displacement(rep, times_s)
    return rep.x + rep.dx * fraction, rep.y + rep.dy * fraction


def repetition_phase(rep: Repetition, time_s: float) -> tuple[int, float]:
    """(repetitions completed by `time_s`, displacement fraction at `time_s`).

    completed is 0 before and during the first repetition and `count` from `rep.end_s` on, so
    "how many times has it happened so far" is `repetition_phase(rep, t)[0]`. A time within 1e-9 of a
    return to rest counts as at it, so start_s + k·period_s gives k despite floating-point rounding.
    """
    time_s = _check_finite("time_s", time_s)
    phase = (time_s - rep.start_s) / rep.period_s
    completed = min(max(math.floor(phase + 1e-9), 0), rep.count)
    return completed, float(repetition_displacement(rep, time_s))


def _shape_colors(scene: Scene, index: int, times: np.ndarray) -> np.ndarray:
    """[T, 3] uint8 colour of shape `index` at each time, after its colour changes (later in list wins ties)."""
    colors = np.tile(np.asarray(scene.shapes[index].color, np.uint8), (times.size, 1))
    changes = sorted((c for c in scene.color_changes if c.shape == index), key=lambda c: c.time_s)
    for change in changes:  # stable sort: equal times keep list order, so the later entry is applied last
        colors[times >= change.time_s] = change.color
    return colors


# ----------------------------------------------------------------------------------------------
# Rendering


def _coverage(kind: str, size: float, cx: np.ndarray, cy: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, H, W] bool: which pixel centres a shape of `kind` centred at (cx[t], cy[t]) covers.

    Built from a [T, 1, W] column term and a [T, H, 1] row term so the square needs no per-pixel
    arithmetic beyond one `&`.
    """
    half = size / 2
    dx = (np.arange(width) + 0.5)[None, None, :] - cx[:, None, None]  # [T, 1, W]
    dy = (np.arange(height) + 0.5)[None, :, None] - cy[:, None, None]  # [T, H, 1]
    if kind == "square":
        return ((dx >= -half) & (dx < half)) & ((dy >= -half) & (dy < half))
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    # Upward triangle: apex at the top-centre of its size × size box; the half-width grows by 1/2 px per row
    # from the apex down to the base, which spans the box's full width.
    rows = (dy >= -half) & (dy < half)
    return rows & (np.abs(dx) <= (dy + half) / 2)


def _layers(scene: Scene, times: np.ndarray, height: int, width: int):
    """Each drawn object in drawing order, as (coverage [T, H, W] bool or None, colours [T, 3] uint8)."""
    n = times.size
    for i, shape in enumerate(scene.shapes):
        cx, cy = shape_position(shape, times, height, width)
        yield _coverage(shape.kind, shape.size, cx, cy, height, width), _shape_colors(scene, i, times)
    for rep in scene.repetitions:
        cx, cy = repetition_position(rep, times)
        yield _coverage(rep.kind, rep.size, cx, cy, height, width), np.tile(np.asarray(rep.color, np.uint8), (n, 1))
    for appear in scene.appears:
        colors = np.tile(np.asarray(appear.color, np.uint8), (n, 1))
        visible = (times >= appear.time_s) & (times < appear.until_s)
        if not visible.any():
            yield None, colors  # most frames come before or after a cue: skip the mask work
            continue
        coverage = _coverage(appear.kind, appear.size, np.full(n, appear.x), np.full(n, appear.y), height, width)
        yield coverage & visible[:, None, None], colors


def render(scene: Scene, times_s, height: int, width: int) -> np.ndarray:
    """uint8 [len(times_s), height, width, 3] frames of `scene` at each time (seconds).

    Pure: the same scene and times give identical pixels, and each frame depends only on its own time,
    so `render(s, [t])[0] == render(s, [t0, t, t1])[1]`.
    """
    if not isinstance(scene, Scene):
        raise ValueError(f"render expects a Scene, got {type(scene).__name__}")
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    times = np.asarray(times_s, np.float64)
    if times.ndim != 1:
        raise ValueError(f"times_s must be a 1-D sequence of times in seconds, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"times_s must be finite, got {times_s!r}")

    # Paint object *numbers* into a one-byte label map, then look colours up once: writing 3-channel
    # pixels object by object costs ~10× more in numpy than masked writes of a single byte.
    n = times.size
    layers = list(_layers(scene, times, height, width))
    label = np.zeros((n, height, width), np.uint8 if len(layers) < 256 else np.int32)
    palette = np.empty((n, len(layers) + 1, 3), np.uint8)  # [time, label, rgb]; label 0 is the background
    palette[:, 0] = scene.background
    for number, (coverage, colors) in enumerate(layers, start=1):
        palette[:, number] = colors
        if coverage is not None:
            np.copyto(label, number, where=coverage)  # later objects overwrite: drawing order
    flat_index = label + (np.arange(n, dtype=np.intp) * palette.shape[1])[:, None, None]
    return np.take(palette.reshape(-1, 3), flat_index, axis=0)


# ----------------------------------------------------------------------------------------------
# Random scenes and cues


def is_reddish(color) -> bool:
    """Whether a colour could be mistaken for the cue red: bright and clearly redder than it is green or blue.

    "r > 120 and r - max(g, b) >= 40" contains the box "r > 150, g < 100, b < 100" around CUE_RED with a
    margin (oranges and pinks count too), while greys and the muted backgrounds do not.
    """
    r, g, b = _check_color("color", color)
    return r > 120 and r - max(g, b) >= 40


def _contrast(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).sum())


def _muted_background(rng: np.random.Generator) -> Color:
    """A dim, nearly grey colour: channels ≤ 135, so bright objects (and the red cue) stand out on it."""
    base = int(rng.integers(40, 121))
    jitter = rng.integers(-15, 16, size=3)
    return tuple(int(v) for v in np.clip(base + jitter, 0, 255))


def _distractor_color(rng: np.random.Generator, background: Color) -> Color:
    """A random colour that is not reddish and contrasts with the background (rejection sampling)."""
    for _ in range(100):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if not is_reddish(color) and _contrast(color, background) >= _MIN_CONTRAST:
            return color
    return (235, 235, 235)  # unreachable in practice; near-white contrasts with any muted background


def random_scene(rng: np.random.Generator, height: int, width: int, n_shapes: tuple[int, int] = (1, 3)) -> Scene:
    """A distractor scene: a muted background and n_shapes[0]…n_shapes[1] (inclusive) bouncing shapes.

    Kinds, colours, sizes (10–25% of the shorter side), positions and speeds (5–25 px/s) are random;
    colours are never reddish (see `is_reddish`), so no distractor can be taken for the red-square cue.
    Deterministic given the generator's state.
    """
    rng = _check_rng(rng)
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    low, high = n_shapes
    if isinstance(low, bool) or isinstance(high, bool) or not 0 <= low <= high:
        raise ValueError(f"n_shapes must be (min, max) with 0 <= min <= max, got {n_shapes!r}")
    background = _muted_background(rng)
    shortest = min(height, width)
    shapes = []
    for _ in range(int(rng.integers(low, high + 1))):
        size = max(1.0, float(rng.uniform(0.10, 0.25)) * shortest)
        half = size / 2
        speed = float(rng.uniform(5.0, 25.0))
        angle = float(rng.uniform(0.0, 2 * np.pi))
        shapes.append(
            Shape(
                kind=KINDS[int(rng.integers(len(KINDS)))],
                color=_distractor_color(rng, background),
                size=size,
                x=float(rng.uniform(half, max(half, width - half))),
                y=float(rng.uniform(half, max(half, height - half))),
                vx=speed * math.cos(angle),
                vy=speed * math.sin(angle),
            )
        )
    return Scene(background=background, shapes=tuple(shapes))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _appear_box(appear: Appear) -> Box:
    half = appear.size / 2
    return (appear.x - half, appear.y - half, appear.x + half, appear.y + half)


def _repetition_box(rep: Repetition) -> Box:
    """Everything the repeating object ever covers: its box swept from rest to the far point."""
    half = rep.size / 2
    xs, ys = (rep.x, rep.x + rep.dx), (rep.y, rep.y + rep.dy)
    return (min(xs) - half, min(ys) - half, max(xs) + half, max(ys) + half)


def _default_object_size(height: int, width: int) -> int:
    return max(1, round(0.2 * min(height, width)))


def _object_side(what: str, size, height: int, width: int) -> int:
    """The side of an added object: `size` checked, or the default for the frame."""
    side = _default_object_size(height, width) if size is None else size
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not 0 < side <= min(height, width):
        raise ValueError(f"{what} size must be an integer in [1, {min(height, width)}] pixels, got {size!r}")
    return int(side)


def with_cue(
    scene: Scene,
    time_s: float,
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    size: int | None = None,
    until_s: float = math.inf,
) -> Scene:
    """`scene` plus a CUE_RED square appearing at `time_s` (visible until `until_s`), drawn on top.

    The square (default side 20% of the shorter frame side) is pixel-aligned and fully inside the frame,
    at a random place that overlaps no repeating object's path and no other appear when there is room.
    """
    rng = _check_rng(rng)
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    side = _object_side("cue", size, height, width)
    taken = [_repetition_box(r) for r in scene.repetitions] + [_appear_box(a) for a in scene.appears]
    for _ in range(_PLACEMENT_TRIES):
        # A whole-pixel top-left corner makes the square cover exactly side × side pixels.
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        box = (left, top, left + side, top + side)
        if not any(_boxes_overlap(box, other) for other in taken):
            break
    cue = Appear("square", CUE_RED, side, left + side / 2, top + side / 2, time_s, until_s)
    return dataclasses.replace(scene, appears=(*scene.appears, cue))


def with_repetition(
    scene: Scene,
    rng: np.random.Generator,
    start_s: float,
    period_s: float,
    count: int,
    height: int,
    width: int,
    *,
    size: int | None = None,
) -> Scene:
    """`scene` plus a distinctive object that repeats an out-and-back motion `count` times from `start_s`.

    The object is a circle or triangle (never a square, never reddish) in a saturated colour that
    contrasts with the background, drawn over the distractors; its whole path stays inside the frame
    and avoids existing appears when there is room. Amplitude is 20–35% of the shorter side.
    """
    rng = _check_rng(rng)
    height = _check_frame_side("height", height)
    width = _check_frame_side("width", width)
    side = _object_side("repetition", size, height, width)
    half = side / 2
    kind = ("circle", "triangle")[int(rng.integers(2))]
    # Any palette colour is distinctive; prefer those that stand out on this background (a grey
    # background leaves several; a white one might leave none, so fall back to the whole palette).
    candidates = [c for c in _REPETITION_PALETTE if _contrast(c, scene.background) >= _MIN_CONTRAST]
    candidates = candidates or list(_REPETITION_PALETTE)
    color = candidates[int(rng.integers(len(candidates)))]
    # The path from rest to far point must fit: cap the amplitude at the room the frame leaves.
    amplitude = min(float(rng.uniform(0.20, 0.35)) * min(height, width), min(height, width) - side)
    angle = float(rng.uniform(0.0, 2 * np.pi))
    dx, dy = amplitude * math.cos(angle), amplitude * math.sin(angle)
    taken = [_appear_box(a) for a in scene.appears]
    for _ in range(_PLACEMENT_TRIES):
        x = float(rng.uniform(half - min(0.0, dx), width - half - max(0.0, dx)))
        y = float(rng.uniform(half - min(0.0, dy), height - half - max(0.0, dy)))
        rep = Repetition(kind, color, side, x, y, dx, dy, start_s, period_s, count)
        if not any(_boxes_overlap(_repetition_box(rep), other) for other in taken):
            break
    return dataclasses.replace(scene, repetitions=(*scene.repetitions, rep))
