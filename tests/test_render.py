"""The render layer: sign handling, clipping, colormaps and blending."""

from __future__ import annotations

import numpy as np
import pytest

from explainers import render

MAP = np.array([[-2.0, -1.0, 0.0], [1.0, 2.0, 4.0]], np.float32)


def test_signs_select_the_right_part():
    pos = render.normalise(MAP, sign="positive", clip_percentile=100)
    np.testing.assert_allclose(pos, [[0, 0, 0], [0.25, 0.5, 1.0]])
    neg = render.normalise(MAP, sign="negative", clip_percentile=100)
    np.testing.assert_allclose(neg, [[1.0, 0.5, 0], [0, 0, 0]])
    absolute = render.normalise(MAP, sign="absolute", clip_percentile=100)
    np.testing.assert_allclose(absolute, [[0.5, 0.25, 0], [0.25, 0.5, 1.0]])
    signed = render.normalise(MAP, sign="signed", clip_percentile=100)
    np.testing.assert_allclose(signed, [[-0.5, -0.25, 0], [0.25, 0.5, 1.0]])


def test_percentile_clipping_saturates_outliers():
    values = np.concatenate([np.linspace(0, 1, 99), [1000.0]]).astype(np.float32)
    display = render.normalise(values[None], sign="positive", clip_percentile=98)
    assert display.max() == 1.0
    assert display[0, 50] > 0.4  # not squashed to ~0 by the outlier


def test_all_zero_map_is_black_not_nan():
    assert np.all(render.normalise(np.zeros((3, 3)), sign="positive") == 0)


def test_colormap_ends():
    lut = render.colormap_lut("Greys")
    assert lut.shape == (256, 3)
    np.testing.assert_array_equal(lut[0], [255, 255, 255])
    np.testing.assert_array_equal(lut[-1], [0, 0, 0])
    diverging = render.colorize(np.array([[-1.0, 0.0, 1.0]]), "RdBu_r", signed=True)
    assert diverging[0, 0, 2] > diverging[0, 0, 0]  # negative is blue
    assert diverging[0, 2, 0] > diverging[0, 2, 2]  # positive is red
    assert diverging[0, 1].min() > 240  # zero is near white


def test_overlay_blends_and_resizes():
    image = np.full((6, 9, 3), 100, np.uint8)
    attribution = np.ones((2, 3), np.float32)
    assert render.overlay(image, attribution, alpha=0.0).tolist() == image.tolist()
    full = render.overlay(image, attribution, alpha=1.0, colormap="Greys")
    assert full.shape == (6, 9, 3) and np.all(full == 0)  # max value in Greys is black
    with pytest.raises(ValueError, match="alpha"):
        render.overlay(image, attribution, alpha=1.5)


def test_blur_spreads_a_point():
    point = np.zeros((21, 21), np.float32)
    point[10, 10] = 1.0
    blurred = render.blur_map(point, 2.0)
    assert blurred[10, 10] < 1.0 and blurred[10, 13] > 0
    assert blurred.sum() == pytest.approx(1.0, rel=0.05)


def test_heatmap_figure_hover_shows_raw_values():
    figure = render.heatmap_figure(MAP, sign="signed")
    trace = figure.data[0]
    np.testing.assert_allclose(np.asarray(trace.customdata), MAP)
    assert "raw" in trace.hovertemplate


def test_heatmap_figure_is_in_raw_units():
    """The chart's colour bar spans the map's own clipping value in raw units (not 0–1), names
    the units, and a shared scale replaces it."""
    signed = render.heatmap_figure(MAP, sign="signed", clip_percentile=100.0, units="Δ logit")
    trace = signed.data[0]
    top = float(np.abs(MAP).max())
    assert (trace.zmin, trace.zmax) == pytest.approx((-top, top))
    np.testing.assert_allclose(np.asarray(trace.z), MAP)
    assert signed.layout.title.text == "Δ logit"
    positive = render.heatmap_figure(MAP, sign="positive", clip_percentile=100.0).data[0]
    assert (positive.zmin, positive.zmax) == pytest.approx((0.0, float(MAP.max())))
    shared_figure = render.heatmap_figure(MAP, sign="absolute", scale=100.0, units="x")
    shared = shared_figure.data[0]
    assert shared.zmax == 100.0 and shared_figure.layout.title.text == "|x|"
    np.testing.assert_allclose(np.asarray(shared.z), np.abs(MAP))


def test_a_shared_scale_keeps_magnitudes_comparable():
    """Two maps, one 1000× weaker: on their own scales they look the same; on one shared scale
    the weak one is (nearly) blank and the strong one unchanged."""
    strong = np.abs(MAP).astype(np.float32)
    weak = strong / 1000
    own = [render.normalise(m, sign="positive", clip_percentile=100.0) for m in (strong, weak)]
    np.testing.assert_allclose(own[0], own[1], atol=1e-6)
    scale = max(
        render.display_scale(m, sign="positive", clip_percentile=100.0) for m in (strong, weak)
    )
    assert scale == pytest.approx(float(strong.max()))
    shared = [
        render.normalise(m, sign="positive", clip_percentile=100.0, scale=scale)
        for m in (strong, weak)
    ]
    np.testing.assert_allclose(shared[0], own[0], atol=1e-6)
    assert shared[1].max() == pytest.approx(own[1].max() / 1000, rel=1e-4)
