"""Reading user images into one canonical form: a uint8 array of shape (H, W, 3)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explainers.errors import ImageError

#: Largest image accepted, in pixels. Pillow's own guard against decompression bombs is a warning up
#: to twice its limit; we refuse outright, before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
#: Largest aspect ratio accepted (long side / short side); beyond it nothing is recognisable once
#: resized to a square model input.
MAX_ASPECT_RATIO = 20.0

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ImageError("The image file is empty (0 bytes). Choose another file.")
        stream: io.BytesIO | Path = io.BytesIO(data)
    else:
        stream = Path(source)
        if not stream.exists():
            raise ImageError(f"No image file at {str(stream)!r}.")
        if stream.stat().st_size == 0:
            raise ImageError(f"The image file {stream.name!r} is empty (0 bytes).")
    try:
        return Image.open(stream)
    except UnidentifiedImageError as exc:
        raise ImageError(
            "This file is not an image format we can read. Use PNG, JPEG, WebP, BMP, GIF or TIFF."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"The image is too large to open safely: {exc}") from exc
    except OSError as exc:
        raise ImageError(f"The image could not be read ({exc}).") from exc


def _check_size(img: Image.Image) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels (size {width}×{height}).")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"The image is {width}×{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP. Downscale it before uploading."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(
            f"The image is {width}×{height}: an aspect ratio of {ratio:.0f}:1 is above the "
            f"{MAX_ASPECT_RATIO:.0f}:1 limit. Crop it to the object first."
        )


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit-depth grayscale: scale the full range of the type to 0..255 instead of clipping
        # (Pillow's convert("L") clips 16-bit values to 255, which whitens the image).
        values = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if np.nanmax(values) <= 1.0 else 255.0
        elif mode == "I" and np.nanmax(values) <= 255:
            top = 255.0
        else:
            top = 65535.0
        gray = np.clip(np.nan_to_num(values) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels are shown on white, as an image viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    # CMYK, YCbCr, palette, 1-bit, grayscale and RGB all have exact Pillow conversions.
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(source: ImageSource) -> np.ndarray:
    """Read an image file or its bytes into an RGB array.

    Parameters
    ----------
    source
        A path or the raw bytes of a PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF file.

    Returns
    -------
    np.ndarray
        uint8 array of shape (H, W, 3), values 0..255, with the EXIF orientation applied. RGBA and
        palette images are composited on white; grayscale and 16-bit images are converted to RGB.

    Raises
    ------
    ImageError
        For an empty, corrupt, truncated, unsupported, oversized or extremely elongated image.
    """
    img = _open(source)
    try:
        _check_size(img)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img) or img
        _check_size(img)
        array = _to_rgb_uint8(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"The image is damaged or truncated and could not be decoded ({exc})."
        ) from exc
    finally:
        img.close()
    return np.ascontiguousarray(array)


def check_image_array(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image and return it as uint8 (H, W, 3).

    Accepts uint8 arrays of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha is dropped).
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"expected an image array of shape (H, W) or (H, W, C) with C in 1, 3 or 4, "
            f"got shape {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"the image array has no pixels (shape {array.shape})")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)
