"""Ground-truth object masks for the Evaluate page, without Streamlit: from an uploaded picture,
from a box, and the small preview that shows one on the image."""

from __future__ import annotations

import numpy as np

from dashboard import service, visuals
from dashboard.service import ServiceError

#: The side of the mask preview, in pixels.
MASK_PREVIEW_SIDE = 192


def mask_from_upload(name: str, data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A ground-truth mask from an uploaded picture: white (grey level > 127) is the object.

    ``size`` is the image's (width, height); a mask of another size is resized to it (nearest
    neighbour). Returns the bool (H, W) mask and a note on what was done. Raises ServiceError
    for a file that is not an image, or a mask that is empty or covers the whole image.
    """
    from PIL import Image

    picture = service.load_image_bytes(name, data).pixels
    grey = picture.astype(np.float32).mean(axis=2)
    note = f"{name}: {picture.shape[1]}×{picture.shape[0]}"
    width, height = size
    if grey.shape != (height, width):
        resized = Image.fromarray(grey.astype(np.uint8)).resize((width, height), Image.NEAREST)
        grey = np.asarray(resized, np.float32)
        note += f", resized to {width}×{height}"
    mask = grey > 127
    if not mask.any():
        raise ServiceError(
            f"The mask {name!r} has no white pixel: paint the object white (grey level above 127) "
            "on a black background."
        )
    if mask.all():
        raise ServiceError(
            f"The mask {name!r} is white everywhere: it must mark the object only (white) on a "
            "black background."
        )
    return mask, note + f" · object = {mask.mean():.0%} of the image"


def box_mask(size: tuple[int, int], xs: tuple[int, int], ys: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask that is True inside the box ``xs`` × ``ys`` (pixel edges, end
    exclusive) of an image of ``size`` = (width, height)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[ys[0] : ys[1], xs[0] : xs[1]] = True
    return mask


def mask_preview(pixels: np.ndarray, mask: np.ndarray, side: int = MASK_PREVIEW_SIDE) -> np.ndarray:
    """The image at about ``side`` pixels with the mask's outline in white, uint8 (h, w, 3)."""
    from PIL import Image

    if max(pixels.shape[:2]) < side:
        return visuals.draw_outlines(visuals.enlarge(pixels, side), visuals.enlarge(mask, side))
    small = visuals.fit(pixels, side)
    size = (small.shape[1], small.shape[0])
    shrunk = Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(size, Image.NEAREST)
    return visuals.draw_outlines(small, np.asarray(shrunk) > 0)
