"""Turning raw attribution maps into pictures. The only place where sign handling, percentile
clipping, normalisation, colormaps and blending happen — so a display change never recomputes an
explanation."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import plotly.graph_objects as go

Sign = Literal["positive", "negative", "absolute", "signed"]
SIGNS: tuple[str, ...] = get_args(Sign)
SEQUENTIAL_COLORMAPS = ("Inferno", "Viridis", "Jet", "Turbo", "Magma", "Hot", "Greys")
DIVERGING_COLORMAPS = ("RdBu_r", "PiYG", "BrBG", "Picnic")
COLORMAPS = SEQUENTIAL_COLORMAPS + DIVERGING_COLORMAPS


def default_colormap(sign: Sign) -> str:
    return "RdBu_r" if sign == "signed" else "Jet"


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A 256-entry uint8 RGB lookup table (256, 3) sampled from a Plotly colorscale."""
    import plotly.colors as pc

    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    samples = pc.sample_colorscale(pc.get_colorscale(name), list(np.linspace(0, 1, 256)))
    rgb = [tuple(float(v) for v in s[s.index("(") + 1 : -1].split(",")) for s in samples]
    return np.clip(np.rint(np.array(rgb)), 0, 255).astype(np.uint8)


def blur_map(attribution: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float map (σ in pixels); σ ≤ 0 returns the map unchanged."""
    from explainers.core.maps import gaussian_blur

    return gaussian_blur(attribution, sigma)


def _part(values: np.ndarray, sign: Sign) -> np.ndarray:
    if sign == "positive":
        return np.maximum(values, 0)
    if sign == "negative":
        return np.maximum(-values, 0)
    return np.abs(values)


def _display_values(attribution: np.ndarray, sign: Sign, clip_percentile: float, blur: float):
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    return blur_map(np.nan_to_num(np.asarray(attribution, np.float64)).astype(np.float32), blur)


def display_scale(
    attribution: np.ndarray,
    *,
    sign: Sign = "positive",
    clip_percentile: float = 99.0,
    blur: float = 0.0,
) -> float:
    """The raw value (in the map's own units) that gets the top colour when the map is scaled on
    its own: the ``clip_percentile``-th percentile of the non-zero shown part; 0 for an empty
    map. Several maps drawn with the largest of their scales share one colour scale."""
    part = _part(_display_values(attribution, sign, clip_percentile, blur), sign)
    nonzero = part[part > 0]
    return float(np.percentile(nonzero, clip_percentile)) if nonzero.size else 0.0


def normalise(
    attribution: np.ndarray,
    *,
    sign: Sign = "positive",
    clip_percentile: float = 99.0,
    blur: float = 0.0,
    scale: float | None = None,
) -> np.ndarray:
    """Map a raw attribution to display values, float32 (H, W).

    ``positive``/``negative``/``absolute`` give values in [0, 1]: the chosen part of the map
    divided by its ``clip_percentile``-th percentile and clipped. ``signed`` gives [-1, 1], scaled
    by the percentile of |map| so that zero stays zero (for a diverging colormap). With
    ``scale`` (raw units, e.g. shared by several maps) the map is divided by it instead.
    """
    values = _display_values(attribution, sign, clip_percentile, blur)
    part = _part(values, sign)
    if scale is None:
        nonzero = part[part > 0]
        scale = float(np.percentile(nonzero, clip_percentile)) if nonzero.size else 0.0
    if not scale > 0:
        return np.zeros(values.shape, np.float32)
    if sign == "signed":
        return np.clip(values / scale, -1.0, 1.0).astype(np.float32)
    return np.clip(part / scale, 0.0, 1.0).astype(np.float32)


def colorize(display: np.ndarray, colormap: str, *, signed: bool = False) -> np.ndarray:
    """Display values ([0, 1], or [-1, 1] when ``signed``) → uint8 RGB (H, W, 3)."""
    unit = (display + 1.0) / 2.0 if signed else display
    index = np.clip(np.rint(unit * 255), 0, 255).astype(np.intp)
    return colormap_lut(colormap)[index]


def heatmap(
    attribution: np.ndarray,
    *,
    sign: Sign = "positive",
    colormap: str | None = None,
    clip_percentile: float = 99.0,
    blur: float = 0.0,
    scale: float | None = None,
) -> np.ndarray:
    """The colour-mapped attribution alone, uint8 (H, W, 3); ``scale`` as in :func:`normalise`."""
    display = normalise(
        attribution, sign=sign, clip_percentile=clip_percentile, blur=blur, scale=scale
    )
    return colorize(display, colormap or default_colormap(sign), signed=sign == "signed")


def overlay(
    image: np.ndarray,
    attribution: np.ndarray,
    *,
    sign: Sign = "positive",
    colormap: str | None = None,
    alpha: float = 0.5,
    clip_percentile: float = 99.0,
    blur: float = 0.0,
    scale: float | None = None,
) -> np.ndarray:
    """The heatmap alpha-blended over the image, uint8 (H, W, 3).

    The attribution is resized to the image if their sizes differ (bilinear).
    """
    from explainers.core.maps import resize_map

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if attribution.shape != image.shape[:2]:
        attribution = resize_map(attribution, image.shape[:2])
    colours = heatmap(
        attribution,
        sign=sign,
        colormap=colormap,
        clip_percentile=clip_percentile,
        blur=blur,
        scale=scale,
    )
    blended = (1.0 - alpha) * image[:, :, :3].astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def heatmap_figure(
    attribution: np.ndarray,
    *,
    sign: Sign = "signed",
    colormap: str | None = None,
    clip_percentile: float = 99.0,
    title: str | None = None,
    height: int = 420,
    units: str = "attribution",
    scale: float | None = None,
) -> go.Figure:
    """An interactive Plotly heatmap of the raw values, in their own units.

    Colours follow the same sign and clipping as the overlay (the colour bar spans
    ± ``scale``, the map's own clipping percentile unless given, in raw units and titled
    ``units``); hover text shows the raw number.
    """
    import plotly.graph_objects as go

    raw = np.asarray(attribution, np.float32)
    if scale is None:
        scale = display_scale(raw, sign=sign, clip_percentile=clip_percentile)
    top = float(scale) if scale and scale > 0 else float(np.max(np.abs(raw)) or 1.0)
    if sign == "positive":
        z, low = raw, 0.0
    elif sign == "negative":
        z, low = -raw, 0.0
    elif sign == "absolute":
        z, low = np.abs(raw), 0.0
    else:
        z, low = raw, -top
    label = f"−({units})" if sign == "negative" else f"|{units}|" if sign == "absolute" else units
    figure = go.Figure(
        go.Heatmap(
            z=z,
            customdata=raw,
            colorscale=colormap or default_colormap(sign),
            zmin=low,
            zmax=top,
            hovertemplate="x=%{x}, y=%{y}<br>raw=%{customdata:.4g}<extra></extra>",
            colorbar={"exponentformat": "e"},
        )
    )
    figure.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    figure.update_xaxes(constrain="domain")
    # The units can be a phrase ("Δ probability of circle when the patch is hidden"): they head
    # the chart rather than squeeze along the colour bar.
    heading = f"{title} · {label}" if title else label
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 34, "b": 10},
        title={"text": heading, "font": {"size": 12}, "x": 0.0, "xanchor": "left"},
    )
    return figure


def to_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB array."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
