"""Pictures made from cached raw maps: overlays with display settings, ground-truth outlines,
feature-map mosaics and the comparison grid. Pure numpy/Pillow on top of ``explainers.render``;
nothing here computes an explanation, so every display change is cheap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from explainers import render
from explainers.core.maps import resize_map

#: Outline colours: the object mask in white, the shortcut marker in magenta (absent from the
#: sequential colormaps, so it stays visible on any overlay).
MASK_COLOUR = (255, 255, 255)
MARKER_COLOUR = (255, 0, 255)
#: Small images are enlarged (nearest neighbour, integer factor) to at least this side for display.
DISPLAY_MIN_SIDE = 384
#: Large images are drawn at most this big on screen (exports keep the full resolution).
DISPLAY_MAX_SIDE = 1024


@dataclass(frozen=True)
class DisplaySettings:
    """How a raw map is shown. None of these is ever part of a computation's cache key."""

    sign: str = "positive"
    sequential_colormap: str = "Jet"
    diverging_colormap: str = "RdBu_r"
    alpha: float = 0.5
    clip_percentile: float = 99.0
    blur: float = 0.0
    outline_mask: bool = False
    outline_marker: bool = False
    #: None: each map scaled to its own clipping percentile. A number: the raw value (in the
    #: maps' units) that gets the top colour, shared by every map drawn with these settings.
    scale: float | None = None

    @property
    def colormap(self) -> str:
        """The colormap in use: diverging for signed maps, sequential otherwise."""
        return self.diverging_colormap if self.sign == "signed" else self.sequential_colormap

    def describe(self) -> str:
        scaling = (
            f"clipped at the {self.clip_percentile:g}th percentile of each map"
            if self.scale is None
            else f"one shared colour scale (top colour at {self.scale:.4g} raw units)"
        )
        return (
            f"sign {self.sign}, colormap {self.colormap}, opacity {self.alpha:.2f}, "
            f"{scaling}, blur σ {self.blur:g} px"
        )


def display_inputs(
    image: np.ndarray,
    attribution: np.ndarray,
    mask: np.ndarray | None,
    marker: np.ndarray | None,
    settings: DisplaySettings,
    max_side: int | None = DISPLAY_MAX_SIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, DisplaySettings]:
    """Image, map, masks and settings scaled so that the longer side is at most ``max_side``
    (the blur σ scales with them, so the picture looks the same); unchanged when small."""
    longest = max(image.shape[:2])
    if max_side is None or longest <= max_side:
        return image, attribution, mask, marker, settings
    scale = max_side / longest
    small = fit(image, max_side)
    size = small.shape[:2]

    def shrink_mask(region: np.ndarray | None) -> np.ndarray | None:
        if region is None:
            return None
        picture = Image.fromarray(np.asarray(region, np.uint8) * 255)
        return np.asarray(picture.resize((size[1], size[0]), Image.NEAREST)) > 0

    return (
        small,
        resize_map(attribution, size),
        shrink_mask(mask),
        shrink_mask(marker),
        replace(settings, blur=settings.blur * scale),
    )


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The boundary pixels of a bool mask (H, W), ``thickness`` pixels wide, as bool (H, W)."""
    image = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
    size = 2 * thickness + 1
    inner = image.filter(ImageFilter.MinFilter(size))
    return (np.asarray(image) > 0) & ~(np.asarray(inner) > 0)


def draw_outlines(
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    marker: np.ndarray | None = None,
) -> np.ndarray:
    """Copy of ``rgb`` (H, W, 3) uint8 with the mask and marker boundaries painted on."""
    out = np.array(rgb, np.uint8, copy=True)
    thickness = max(1, round(max(out.shape[:2]) / 160))
    for region, colour in ((mask, MASK_COLOUR), (marker, MARKER_COLOUR)):
        if region is not None and region.shape == out.shape[:2]:
            out[outline(region, thickness)] = colour
    return out


def shared_scale(attributions: Sequence[np.ndarray], settings: DisplaySettings) -> float:
    """One colour scale for several maps: the largest of their own clipping scales (raw units),
    so no map is clipped more than it would be on its own and their magnitudes compare."""
    scales = [
        render.display_scale(
            a,
            sign=settings.sign,  # type: ignore[arg-type]
            clip_percentile=settings.clip_percentile,
            blur=settings.blur,
        )
        for a in attributions
    ]
    return max(scales, default=0.0)


def heatmap_rgb(attribution: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    """The colour-mapped map alone, uint8 (H, W, 3)."""
    return render.heatmap(
        attribution,
        sign=settings.sign,  # type: ignore[arg-type]
        colormap=settings.colormap,
        clip_percentile=settings.clip_percentile,
        blur=settings.blur,
        scale=settings.scale,
    )


def overlay_rgb(
    image: np.ndarray,
    attribution: np.ndarray,
    settings: DisplaySettings,
    mask: np.ndarray | None = None,
    marker: np.ndarray | None = None,
) -> np.ndarray:
    """The map blended over the image, uint8 (H, W, 3), with the outlines the settings ask for."""
    blended = render.overlay(
        image,
        attribution,
        sign=settings.sign,  # type: ignore[arg-type]
        colormap=settings.colormap,
        alpha=settings.alpha,
        clip_percentile=settings.clip_percentile,
        blur=settings.blur,
        scale=settings.scale,
    )
    return draw_outlines(
        blended,
        mask if settings.outline_mask else None,
        marker if settings.outline_marker else None,
    )


def enlarge(rgb: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Enlarge a small image by an integer factor (nearest neighbour) so that its longer side is
    at least ``min_side``; pixels stay square and aligned, large images are returned as is."""
    longest = max(rgb.shape[:2])
    factor = int(np.ceil(min_side / longest)) if longest < min_side else 1
    if factor <= 1:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the longer side is ``side`` (nearest when enlarging, else antialiased)."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    return np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(size, resample))


def channel_tiles(
    activations: np.ndarray, channels: Sequence[int], colormap: str = "Viridis"
) -> list[np.ndarray]:
    """One colour-mapped tile per channel of ``activations`` (h, w, K), each scaled to its own
    min..max (a constant channel is shown flat)."""
    tiles = []
    for index in channels:
        values = np.asarray(activations[:, :, index], np.float32)
        low, high = float(values.min()), float(values.max())
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
        tiles.append(render.colorize(unit, colormap))
    return tiles


def channel_order(activations: np.ndarray, order: str) -> list[int]:
    """Channel indices: ``"most active"`` (mean activation, descending) or ``"index"``."""
    if order == "most active":
        return [int(i) for i in np.argsort(-activations.mean(axis=(0, 1)), kind="stable")]
    return list(range(activations.shape[-1]))


@lru_cache(maxsize=1)
def _dejavu_path() -> str | None:
    """DejaVu Sans (covers "×", "≈", "ε", "—"): matplotlib's copy (installed with LIME), else
    the system's (Debian: fonts-dejavu-core). Pillow's built-in font lacks those glyphs."""
    import importlib.util
    from pathlib import Path

    candidates = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidates.append(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    candidates.append(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
    return next((str(p) for p in candidates if p.is_file()), None)


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _dejavu_path()
    if path is not None:
        return ImageFont.truetype(path, size=size)
    return ImageFont.load_default(size=size)


#: What to write instead of characters Pillow's built-in font cannot draw (when no DejaVu).
_ASCII_FALLBACK = str.maketrans({"×": "x", "≈": "~", "—": "-", "–": "-", "ε": "eps", "·": "-"})


def _drawable(text: str) -> str:
    return text if _dejavu_path() is not None else text.translate(_ASCII_FALLBACK)


def compose_grid(
    panels: Sequence[tuple[str, str, np.ndarray]],
    columns: int = 4,
    tile: int = 288,
    title: str | None = None,
) -> np.ndarray:
    """Panels ``(heading, caption, rgb)`` laid out in a grid with text, uint8 RGB (one picture
    of a whole comparison, for export)."""
    columns = max(1, min(columns, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    pad, head, foot = 12, 30, 26
    top = 40 if title else 0
    width = columns * (tile + pad) + pad
    height = top + rows * (head + tile + foot + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 10), _drawable(title), fill=(20, 20, 20), font=_font(20))
    for i, (heading, caption, rgb) in enumerate(panels):
        row, column = divmod(i, columns)
        x = pad + column * (tile + pad)
        y = top + pad + row * (head + tile + foot + pad)
        draw.text((x, y + 4), _drawable(heading), fill=(20, 20, 20), font=_font(18))
        picture = Image.fromarray(fit(rgb, tile))
        canvas.paste(picture, (x + (tile - picture.width) // 2, y + head))
        draw.text((x, y + head + tile + 4), _drawable(caption), fill=(90, 90, 90), font=_font(14))
    return np.asarray(canvas)
