"""The synthetic video renderer: pixels, motion, cues, repetitions, random scenes, and patch round trips."""

import math

import numpy as np
import pytest

from interaction_jax.video import (
    CUE_RED,
    Appear,
    ColorChange,
    Repetition,
    Scene,
    Shape,
    is_reddish,
    patchify,
    random_scene,
    render,
    repetition_displacement,
    repetition_phase,
    shape_position,
    unpatchify,
    with_cue,
    with_repetition,
)

H, W = 80, 80
BG = (10, 20, 30)
GREEN = (40, 200, 60)
BLUE = (30, 60, 220)


def _color_mask(frame: np.ndarray, color) -> np.ndarray:
    return np.all(frame == np.asarray(color, np.uint8), axis=-1)


def test_empty_scene_is_background_everywhere():
    frames = render(Scene(BG), [0.0, 3.5], H, W)
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert _color_mask(frames, BG).all()


def test_square_covers_exactly_its_pixels():
    scene = Scene(BG, shapes=(Shape("square", GREEN, 10, 20.0, 30.0),))
    frame = render(scene, [0.0], H, W)[0]
    covered = _color_mask(frame, GREEN)
    assert covered[30, 20].all()  # centre pixel
    assert covered.sum() == 100
    rows, cols = np.nonzero(covered)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (25, 34, 15, 24)
    assert tuple(frame[30, 25]) == BG and tuple(frame[30, 14]) == BG  # just outside, left and right
    assert tuple(frame[35, 20]) == BG and tuple(frame[24, 20]) == BG  # just outside, below and above


def test_circle_and_square_differ_at_the_corners():
    square = render(Scene(BG, shapes=(Shape("square", GREEN, 20, 40.0, 40.0),)), [0.0], H, W)[0]
    circle = render(Scene(BG, shapes=(Shape("circle", GREEN, 20, 40.0, 40.0),)), [0.0], H, W)[0]
    for row, col in [(30, 30), (30, 49), (49, 30), (49, 49)]:  # the square's corner pixels
        assert tuple(square[row, col]) == GREEN
        assert tuple(circle[row, col]) == BG
    for row, col in [(40, 40), (40, 31), (31, 40)]:  # centre and edge midpoints are in both
        assert tuple(square[row, col]) == GREEN and tuple(circle[row, col]) == GREEN
    assert 0.70 < _color_mask(circle, GREEN).sum() / 400 < 0.85  # about π/4 of the box


def test_triangle_points_up():
    frame = render(Scene(BG, shapes=(Shape("triangle", GREEN, 20, 40.0, 40.0),)), [0.0], H, W)[0]
    covered = _color_mask(frame, GREEN)
    widths = covered.sum(axis=1)
    assert widths[30] <= 2 and widths[49] >= 18  # narrow apex row, wide base row
    assert np.all(np.diff(widths[30:50]) >= 0)
    assert widths[29] == 0 and widths[50] == 0


def test_draw_order_later_objects_are_on_top():
    shapes = (Shape("square", GREEN, 20, 40.0, 40.0), Shape("square", BLUE, 6, 40.0, 40.0))
    frame = render(Scene(BG, shapes=shapes), [0.0], H, W)[0]
    assert tuple(frame[40, 40]) == BLUE and tuple(frame[32, 32]) == GREEN
    flipped = render(Scene(BG, shapes=shapes[::-1]), [0.0], H, W)[0]
    assert tuple(flipped[40, 40]) == GREEN


def test_linear_motion_and_bounce_values():
    shape = Shape("square", GREEN, 10, 40.0, 40.0, vx=10.0, vy=-5.0)
    x, y = shape_position(shape, [0.0, 1.0, 3.5, 4.0], H, W)
    # x hits the wall at 75 (= 80 - 5) at t=3.5, then comes back; y moves freely upward.
    np.testing.assert_allclose(x, [40.0, 50.0, 75.0, 70.0])
    np.testing.assert_allclose(y, [40.0, 35.0, 22.5, 20.0])
    frame = render(Scene(BG, shapes=(shape,)), [4.0], H, W)[0]
    assert tuple(frame[20, 70]) == GREEN and tuple(frame[20, 76]) == BG


def test_bouncing_stays_inside_for_long_times_and_is_continuous():
    shape = Shape("square", GREEN, 12, 13.0, 57.0, vx=37.3, vy=-23.1)
    times = np.linspace(0.0, 1000.0, 40001)
    x, y = shape_position(shape, times, H, W)
    assert x.min() >= 6 and x.max() <= 74 and y.min() >= 6 and y.max() <= 74
    assert x.min() < 6.5 and x.max() > 73.5  # it does reach both walls
    eps = 1e-3
    x2, y2 = shape_position(shape, times + eps, H, W)
    assert np.abs(x2 - x).max() <= 37.3 * eps + 1e-9
    assert np.abs(y2 - y).max() <= 23.1 * eps + 1e-9
    # A fully visible 12-px square always covers exactly 144 pixels, however far in time.
    frames = render(Scene(BG, shapes=(shape,)), np.linspace(900.0, 1000.0, 37), H, W)
    assert np.all(_color_mask(frames, GREEN).sum(axis=(1, 2)) == 144)


def test_color_change_applies_from_its_time_on():
    scene = Scene(BG, shapes=(Shape("circle", GREEN, 16, 40.0, 40.0),), color_changes=(ColorChange(0, 2.0, BLUE),))
    frames = render(scene, [0.0, 1.99, 2.0, 5.0], H, W)
    assert [tuple(f[40, 40]) for f in frames] == [GREEN, GREEN, BLUE, BLUE]


def test_color_change_must_name_an_existing_shape():
    with pytest.raises(ValueError, match=r"color_changes\[0\].shape = 1, but the scene has 1 shapes"):
        Scene(BG, shapes=(Shape("circle", GREEN, 16, 40.0, 40.0),), color_changes=(ColorChange(1, 2.0, BLUE),))


def test_appear_is_visible_only_in_its_window():
    scene = Scene(BG, appears=(Appear("square", CUE_RED, 16, 24.0, 56.0, time_s=1.0, until_s=2.0),))
    frames = render(scene, [0.0, 0.99, 1.0, 1.5, 1.99, 2.0, 3.0], H, W)
    counts = _color_mask(frames, CUE_RED).sum(axis=(1, 2))
    assert counts.tolist() == [0, 0, 256, 256, 256, 0, 0]
    assert tuple(frames[2, 56, 24]) == CUE_RED


def test_appear_window_must_not_be_empty():
    with pytest.raises(ValueError, match="until_s"):
        Appear("square", CUE_RED, 16, 24.0, 56.0, time_s=2.0, until_s=2.0)


def _count_returns_to_rest(displacement: np.ndarray) -> int:
    """Local minima: strictly lower than the sample before, not higher than the one after."""
    d = displacement
    return int(np.sum((d[1:-1] < d[:-2]) & (d[1:-1] <= d[2:])))


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_repetition_returns_to_rest_exactly_count_times(count):
    rep = Repetition("circle", GREEN, 12, 30.0, 40.0, 20.0, 0.0, start_s=2.0, period_s=0.8, count=count)
    times = np.arange(0.0, rep.end_s + 3.0, 0.0037)
    d = repetition_displacement(rep, times)
    assert _count_returns_to_rest(d) == count
    assert np.all(d[times <= 2.0] == 0) and np.all(d[times >= rep.end_s] == 0)
    assert d.max() > 0.999 and d.min() >= 0


def test_repetition_phase_counts_completed_repetitions():
    rep = Repetition("circle", GREEN, 12, 30.0, 40.0, 20.0, 0.0, start_s=2.0, period_s=0.8, count=3)
    assert repetition_phase(rep, 0.0) == (0, 0.0)
    assert repetition_phase(rep, 2.4) == (0, pytest.approx(1.0))  # halfway through the first: far point
    for k in range(1, 4):
        completed, fraction = repetition_phase(rep, 2.0 + k * 0.8)
        assert completed == k and fraction == pytest.approx(0.0, abs=1e-12)
    assert repetition_phase(rep, 2.0 + 1.2)[0] == 1
    assert repetition_phase(rep, 100.0) == (3, 0.0)


def test_repetition_renders_at_rest_and_at_far_point():
    rep = Repetition("square", GREEN, 10, 20.0, 40.0, 30.0, 0.0, start_s=1.0, period_s=2.0, count=2)
    frames = render(Scene(BG, repetitions=(rep,)), [0.5, 2.0, 3.0, 4.0, 6.0], H, W)
    at_rest = [tuple(f[40, 20]) == GREEN for f in frames]
    at_far = [tuple(f[40, 50]) == GREEN for f in frames]
    assert at_rest == [True, False, True, False, True]
    assert at_far == [False, True, False, True, False]


def test_random_scene_never_has_red_distractors():
    for seed in range(300):
        scene = random_scene(np.random.default_rng(seed), H, W)
        assert 1 <= len(scene.shapes) <= 3
        assert not is_reddish(scene.background)
        for shape in scene.shapes:
            r, g, b = shape.color
            assert not (r > 150 and g < 100 and b < 100), (seed, shape)
            assert not is_reddish(shape.color)
        assert not scene.appears and not scene.repetitions


def test_random_scene_frames_contain_no_cue_red_until_the_cue():
    rng = np.random.default_rng(7)
    for _ in range(20):
        scene = with_cue(random_scene(rng, H, W), 3.0, rng, H, W)
        frames = render(scene, np.arange(6.0), H, W)
        counts = _color_mask(frames, CUE_RED).sum(axis=(1, 2))
        assert counts.tolist() == [0, 0, 0, 256, 256, 256]  # drawn on top: the whole 16×16 square shows


def test_random_scene_is_deterministic_per_seed():
    a = random_scene(np.random.default_rng(42), H, W)
    b = random_scene(np.random.default_rng(42), H, W)
    c = random_scene(np.random.default_rng(43), H, W)
    assert a == b and a != c
    times = np.arange(0.0, 10.0)
    np.testing.assert_array_equal(render(a, times, H, W), render(b, times, H, W))


def test_random_scene_respects_n_shapes():
    counts = {len(random_scene(np.random.default_rng(s), H, W, n_shapes=(2, 4)).shapes) for s in range(100)}
    assert counts == {2, 3, 4}
    with pytest.raises(ValueError, match="n_shapes"):
        random_scene(np.random.default_rng(0), H, W, n_shapes=(3, 1))


def test_with_repetition_stays_inside_and_is_not_a_cue():
    for seed in range(100):
        rng = np.random.default_rng(seed)
        scene = with_repetition(random_scene(rng, H, W), rng, 2.0, 1.0, 3, H, W)
        (rep,) = scene.repetitions
        assert rep.kind != "square" and not is_reddish(rep.color) and rep.count == 3
        half = rep.size / 2
        for x, y in [(rep.x, rep.y), (rep.x + rep.dx, rep.y + rep.dy)]:
            assert half - 1e-9 <= x <= W - half + 1e-9 and half - 1e-9 <= y <= H - half + 1e-9
        assert math.hypot(rep.dx, rep.dy) >= 0.2 * H - 1e-9


def test_cue_avoids_the_repeating_object():
    for seed in range(50):
        rng = np.random.default_rng(seed)
        scene = with_repetition(Scene(BG), rng, 0.0, 1.0, 4, H, W)
        scene = with_cue(scene, 0.0, rng, H, W)
        rep, cue = scene.repetitions[0], scene.appears[0]
        frames = render(scene, np.linspace(0.0, 4.0, 41), H, W)
        # Both stay fully visible at every time: neither is drawn over the other.
        assert np.all(_color_mask(frames, CUE_RED).sum(axis=(1, 2)) == cue.size**2)
        assert np.all(_color_mask(frames, rep.color).sum(axis=(1, 2)) > 0)


def test_render_is_pure_and_per_frame():
    rng = np.random.default_rng(3)
    scene = with_cue(with_repetition(random_scene(rng, H, W), rng, 1.0, 0.7, 3, H, W), 2.5, rng, H, W)
    t0, t, t1 = 0.3, 2.9, 17.0
    together = render(scene, [t0, t, t1], H, W)
    np.testing.assert_array_equal(render(scene, [t], H, W)[0], together[1])
    np.testing.assert_array_equal(render(scene, [t0, t, t1], H, W), together)
    assert render(scene, [], H, W).shape == (0, H, W, 3)


def test_unpatchify_inverts_patchify():
    frames = np.random.default_rng(0).integers(0, 256, (3, 120, 80, 3), dtype=np.uint8)
    patches = patchify(frames)
    assert patches.shape == (3, 6, 40, 40, 3)
    np.testing.assert_array_equal(patches[:, 1], frames[:, 0:40, 40:80])  # row-major cells
    np.testing.assert_array_equal(unpatchify(patches, 120, 80), frames)
    single = render(random_scene(np.random.default_rng(1), H, W), [0.0], H, W)[0]
    np.testing.assert_array_equal(unpatchify(patchify(single), H, W), single)


def test_unpatchify_rejects_bad_sizes():
    patches = patchify(np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="height must be a positive integer"):
        unpatchify(patches, 0, 80)
    with pytest.raises(ValueError, match="not a multiple of the 40-pixel patch"):
        unpatchify(patches, 80, 60)
    with pytest.raises(ValueError, match=r"expects patches shaped \[\.\.\., 6, 40, 40, 3\]"):
        unpatchify(patches, 120, 80)


@pytest.mark.parametrize(
    "height, width, bad", [(0, 80, "height"), (-4, 80, "height"), (80, 0, "width"), (80, 7.5, "width")]
)
def test_render_rejects_bad_frame_sizes(height, width, bad):
    with pytest.raises(ValueError, match=f"{bad} must be a positive integer number of pixels"):
        render(Scene(BG), [0.0], height, width)
    with pytest.raises(ValueError, match=f"{bad} must be a positive integer number of pixels"):
        random_scene(np.random.default_rng(0), height, width)


def test_bad_descriptions_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"Shape\.kind must be one of"):
        Shape("hexagon", GREEN, 10, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"Shape\.size must be > 0"):
        Shape("circle", GREEN, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"Scene\.background must be three integers"):
        Scene((300, 0, 0))
    with pytest.raises(ValueError, match=r"Repetition\.count must be an integer >= 0"):
        Repetition("circle", GREEN, 10, 1.0, 1.0, 5.0, 0.0, 0.0, 1.0, -1)
    with pytest.raises(ValueError, match="times_s must be finite"):
        render(Scene(BG), [0.0, math.nan], H, W)
