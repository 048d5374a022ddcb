"""Small array helpers shared by methods and rendering."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (h, w) to ``size`` = (H, W); float32, half-pixel centres.

    Half-pixel-centred sampling (as cv2/PIL do) keeps each coarse cell centred over the image region
    it summarises, so a 12×12 Grad-CAM lines up with the 96×96 image it came from.
    """
    values = np.asarray(values, np.float32)
    height, width = int(size[0]), int(size[1])
    if values.shape == (height, width):
        return values.copy()
    resized = Image.fromarray(values, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized, np.float32)


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
