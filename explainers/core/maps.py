"""Small array helpers shared by methods and rendering."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (h, w) to ``size`` = (H, W); float32, half-pixel centres.

    Half-pixel-centred sampling (as cv2/PIL do) keeps each coarse cell centred over the image region
    it summarises, so a 12×12 Grad-CAM lines up with the 96×96 image it came from. The numbers are
    Pillow's ``Image.resize(BILINEAR)`` on a mode-"F" image (antialiased when shrinking), computed
    for small maps (CAM grids) as two small matrix products (columns, then rows, as Pillow orders
    its passes), which is quicker than a round trip through a Pillow image; larger maps go through
    Pillow, whose banded kernels beat dense products there.
    """
    values = np.asarray(values, np.float32)
    height, width = int(size[0]), int(size[1])
    if values.shape == (height, width):
        return values.copy()
    if max(values.shape) > _SMALL_MAP:
        resized = Image.fromarray(values, mode="F").resize((width, height), Image.BILINEAR)
        return np.asarray(resized, np.float32)
    out = values.astype(np.float64)
    if width != values.shape[1]:  # Pillow resamples horizontally first, rounding to float32
        out = (out @ _bilinear_matrix(values.shape[1], width).T).astype(np.float32)
    if height != values.shape[0]:
        out = (_bilinear_matrix(values.shape[0], height) @ out.astype(np.float64)).astype(
            np.float32
        )
    return np.ascontiguousarray(out, np.float32)


#: Largest map side resized by matrix products (above it, Pillow's banded kernels are faster).
_SMALL_MAP = 64


@lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's bilinear resampling from ``n_in`` to ``n_out`` samples as a (n_out, n_in) float64
    matrix (libImaging/Resample.c, ``precompute_coeffs`` with the triangle filter): the filter is
    stretched by the scale when shrinking, and each row's weights are normalised to sum to 1."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    matrix = np.zeros((n_out, n_in), np.float64)
    for out_index in range(n_out):
        center = (out_index + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), n_in)
        taps = np.arange(low, high)
        weights = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) / filter_scale))
        total = weights.sum()
        matrix[out_index, low:high] = weights / total if total != 0.0 else weights
    matrix.setflags(write=False)
    return matrix


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float map (h, w) with reflected edges; σ in pixels."""
    values = np.asarray(values, np.float32)
    if sigma <= 0:
        return values.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = values.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), axis, padded)
    return out.astype(np.float32)


def effect_size(
    rule: str, raw: np.ndarray, x: np.ndarray, total: float | None = None
) -> tuple[float, str]:
    """A map's size in units of the score it explains, and what was measured, by ``rule``
    (:data:`explainers.core.specs.Effect`). ``raw`` is the map (h, w), ``x`` the model input it
    explains; ``total`` replaces Σ|map| where a wrapper knows better (squared SmoothGrad).

    Attribution maps that spread the score over many pixels are measured by their total
    (gradients by the first-order effect Σ|∂S/∂x| × the input's value range), maps whose every
    value is itself a score change (patches, masks, superpixels) by their largest value.
    """
    magnitude = np.abs(raw.astype(np.float64))
    if total is None:
        total = float(magnitude.sum())
    cells = raw.shape[0] * raw.shape[1]
    if rule == "total":
        return total, "total attribution"
    if rule == "first_order":
        value_range = float(x.max() - x.min()) or 1.0
        return total * value_range, "first-order effect (Σ|gradient| × the input's range)"
    if rule == "total_per_cell":  # CAM: the map's mean is the logit minus the bias
        return total / cells, "total attribution / (h·w)"
    if rule == "twice_total_per_cell":  # Grad-CAM++: ≈ (h·w / 2) × Grad-CAM for a pooled head
        return 2.0 * total / cells, "total attribution × 2 / (h·w)"
    if rule == "largest":
        return float(magnitude.max()), "largest value"
    raise ValueError(f"unknown effect rule {rule!r}")
