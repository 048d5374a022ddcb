"""What hidden pixels become: the one vocabulary of fills.

Occlusion hides a patch, RISE and Score-CAM hide masked-out pixels, LIME and Kernel SHAP hide
superpixels, Integrated Gradients starts its path from a reference image, and the deletion and
insertion curves start from a "no information" image. Each chooses from these fills (in pixel
space, 0..255, before the model's preprocessing); each method offers the subset that suits it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from explainers.core.maps import gaussian_blur

#: Every fill, with what it shows.
FILLS: dict[str, str] = {
    "gray": "mid-gray (127.5 in every channel)",
    "black": "black",
    "white": "white",
    "mean": "the image's mean colour",
    "blur": "a blurred copy of the image",
    "uniform_noise": "uniform noise over 0..255 (seeded)",
    "superpixel_mean": "each superpixel's own mean colour",
}


def fill_blur_sigma(size: tuple[int, ...]) -> float:
    """σ in pixels of the ``"blur"`` fill: 5 % of the longer side, at least 2 px (11 px at 224)."""
    return max(2.0, 0.05 * max(size[:2]))


def blurred(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """``image`` (h, w, C) blurred channel by channel with a Gaussian of ``sigma`` pixels
    (default :func:`fill_blur_sigma`), float32 in the image's units."""
    sigma = fill_blur_sigma(image.shape) if sigma is None else float(sigma)
    pixels = np.asarray(image, np.float32)
    return np.stack([gaussian_blur(pixels[..., c], sigma) for c in range(pixels.shape[-1])], -1)


def check_fill(name: str, offered: Sequence[str], what: str = "fill") -> None:
    """Raise ``ValueError`` naming the choices when ``name`` is not one of ``offered``."""
    if name not in offered:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(offered)}")


def fill_pixels(
    name: str,
    image: np.ndarray,
    *,
    seed: int = 0,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """What the pixels of ``image`` (uint8 (h, w, 3)) show when hidden under fill ``name``:
    float32 (h, w, 3) in 0..255. ``"superpixel_mean"`` needs ``segments`` (h, w) int labels;
    ``"uniform_noise"`` draws from ``seed``."""
    pixels = np.asarray(image, np.float32)
    if name == "gray":
        return np.full_like(pixels, 127.5)
    if name == "black":
        return np.zeros_like(pixels)
    if name == "white":
        return np.full_like(pixels, 255.0)
    if name == "mean":
        return np.broadcast_to(pixels.mean(axis=(0, 1)), pixels.shape).copy()
    if name == "blur":
        return blurred(pixels)
    if name == "uniform_noise":
        return np.random.default_rng(seed).uniform(0, 255, pixels.shape).astype(np.float32)
    if name == "superpixel_mean":
        if segments is None:
            raise ValueError("the superpixel_mean fill needs the superpixel segments")
        flat = segments.ravel()
        counts = np.bincount(flat)
        channels = pixels.reshape(-1, pixels.shape[-1])
        sums = np.stack(
            [np.bincount(flat, weights=channels[:, c], minlength=counts.size) for c in range(3)],
            axis=1,
        )
        return (sums / np.maximum(counts, 1)[:, None])[segments].astype(np.float32)
    check_fill(name, tuple(FILLS))
    raise AssertionError  # unreachable: check_fill raised
