"""Scores of an explanation against ground truth (per sample) and their aggregates."""

from __future__ import annotations

import numpy as np


def _check(attribution: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    attribution = np.asarray(attribution, np.float64)
    mask = np.asarray(mask, bool)
    if attribution.shape != mask.shape:
        raise ValueError(
            f"attribution shape {attribution.shape} does not match mask shape {mask.shape}"
        )
    return attribution, mask


def pointing_game(attribution: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's maximum falls on the object (Zhang et al. 2018, "Top-down neural
    attention by excitation backprop"), optionally within ``tolerance`` pixels of it.

    Ties are broken by the first maximum in row-major order, so a constant map is not rewarded.
    """
    attribution, mask = _check(attribution, mask)
    row, col = np.unravel_index(int(np.argmax(attribution)), attribution.shape)
    if tolerance <= 0:
        return bool(mask[row, col])
    r0, r1 = max(0, row - tolerance), row + tolerance + 1
    c0, c1 = max(0, col - tolerance), col + tolerance + 1
    return bool(mask[r0:r1, c0:c1].any())


def energy_in_mask(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution that lies on the object, in [0, 1] (the
    "energy-based pointing game" of Score-CAM, Wang et al. 2020). 0 for a map with no positive
    value. A map spread uniformly scores the object's area fraction (chance level)."""
    attribution, mask = _check(attribution, mask)
    positive = np.maximum(attribution, 0.0)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0
