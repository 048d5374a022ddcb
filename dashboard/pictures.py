"""The pictures a result is shown as, without Streamlit: a result's overlay and heatmap at display
size, the input image with its outlines, one colour scale for several results, and the interactive
figure of a raw map. The arrays come from :mod:`dashboard.visuals`; this module applies them to the
service's results and images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dashboard import report, visuals
from dashboard.service import ExplanationResult, LoadedImage
from dashboard.visuals import DisplaySettings
from explainers import render

#: The raw-map figure shows at most this many cells per side (larger maps are subsampled).
FIGURE_MAX_SIDE = 320


@dataclass(frozen=True)
class Pictures:
    """A result's overlay and heatmap, RGB uint8."""

    overlay: np.ndarray
    heatmap: np.ndarray


def pictures(
    result: ExplanationResult,
    image: LoadedImage,
    settings: DisplaySettings,
    max_side: int | None = visuals.DISPLAY_MAX_SIDE,
) -> Pictures:
    """The overlay and heatmap for ``settings``; large images are drawn at ``max_side`` (the
    exports are drawn at full resolution when clicked)."""
    pixels, attribution, mask, marker, scaled = visuals.display_inputs(
        image.pixels, result.attribution, image.mask, image.marker, settings, max_side
    )
    return Pictures(
        overlay=visuals.overlay_rgb(pixels, attribution, scaled, mask, marker),
        heatmap=visuals.draw_outlines(
            visuals.heatmap_rgb(attribution, scaled),
            mask if scaled.outline_mask else None,
            marker if scaled.outline_marker else None,
        ),
    )


def pictures_input(image: LoadedImage, settings: DisplaySettings) -> np.ndarray:
    """The input image at display size, with the outlines the settings ask for."""
    pixels, _, mask, marker, _ = visuals.display_inputs(
        image.pixels,
        np.zeros(image.pixels.shape[:2], np.float32),
        image.mask,
        image.marker,
        settings,
    )
    return visuals.draw_outlines(
        pixels,
        mask if settings.outline_mask else None,
        marker if settings.outline_marker else None,
    )


def with_shared_scale(
    settings: DisplaySettings, results: Sequence[ExplanationResult]
) -> DisplaySettings:
    """``settings`` with one colour scale for all ``results`` (see :func:`visuals.shared_scale`)."""
    scale = visuals.shared_scale([r.attribution for r in results], settings)
    return replace(settings, scale=scale if scale > 0 else None)


def raw_map_figure(result: ExplanationResult, settings: DisplaySettings, height: int = 420):
    """The interactive Plotly heatmap of the raw map (hover shows raw values)."""
    attribution = result.attribution
    step = max(1, math.ceil(max(attribution.shape) / FIGURE_MAX_SIDE))
    shown = attribution[::step, ::step]
    figure = render.heatmap_figure(
        shown,
        sign=settings.sign,  # type: ignore[arg-type]
        colormap=settings.colormap,
        clip_percentile=settings.clip_percentile,
        height=height,
        units=report.map_units(result),
        scale=settings.scale,
    )
    # Room for the axis labels (pixel coordinates of the image) and the units above.
    figure.update_layout(margin={"l": 44, "r": 10, "t": 34, "b": 36})
    figure.update_xaxes(title_text="x (pixels)")
    figure.update_yaxes(title_text="y (pixels)")
    if step > 1:
        figure.data[0].x = np.arange(0, attribution.shape[1], step)[: shown.shape[1]]
        figure.data[0].y = np.arange(0, attribution.shape[0], step)[: shown.shape[0]]
    return figure
