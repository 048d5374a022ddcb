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
    assert trace.zmin == -1.0 and trace.zmax == 1.0
