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
