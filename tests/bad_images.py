"""Awkward and broken images, as data: what each case is, how it is uploaded, and what the
loader must do with it — refuse with a phrase, or load and pass a check of how it was converted.

Used by ``tests/test_images.py`` (every case behaves as stated, by path and by bytes) and
``tests/test_reliability_doc.py`` (``docs/RELIABILITY.md`` lists every case with the outcome the
tests observe).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from explainers.io.images import MAX_IMAGE_PIXELS

#: A random 20×30 RGB image most cases are made from.
RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageCase:
    """One image upload.

    Attributes
    ----------
    case_id
        Stable identifier; docs/RELIABILITY.md has one table row per id.
    what
        What the file is, in a few words.
    file_name
        The name it is uploaded under.
    build
        Returns the file's bytes.
    refused
        A phrase of the :class:`~explainers.errors.ImageError` message when the loader must
        refuse the file; None when it must load it.
    check
        For loaded cases: asserts how the image was converted (receives the uint8 (H, W, 3) array).
    """

    case_id: str
    what: str
    file_name: str
    build: Callable[[], bytes]
    refused: str | None = None
    check: Callable[[np.ndarray], None] | None = None


# ------------------------------------------------------------------------------------------------
# Builders and checks
# ------------------------------------------------------------------------------------------------
def _png() -> bytes:
    return encode(Image.fromarray(RGB), "PNG")


def _jpeg() -> bytes:
    return encode(Image.fromarray(RGB), "JPEG", quality=95)


def _corrupt_png() -> bytes:
    data = bytearray(_png())
    start = data.find(b"IDAT") + 20
    for i in range(start, start + 40):  # flip bits inside the compressed pixel stream
        data[i] ^= 0xFF
    return bytes(data)


def _corrupt_jpeg() -> bytes:
    data = bytearray(_jpeg())
    for i in range(len(data) - 300, len(data) - 260):  # damage the entropy-coded scan data
        data[i] ^= 0x55
    return bytes(data)


def _bomb() -> bytes:
    side = int(MAX_IMAGE_PIXELS**0.5) + 200  # 6524 × 6524 = 43 MP declared
    return encode(Image.new("1", (side, side)), "PNG")  # a few KB of zeros


def _cmyk() -> bytes:
    return encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=100)


SIXTEEN = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)


def _sixteen() -> bytes:
    return encode(Image.fromarray(SIXTEEN), "PNG")


PALETTE = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


def _palette() -> bytes:
    return encode(PALETTE, "PNG")


def _palette_transparent() -> bytes:
    return encode(PALETTE, "PNG", transparency=0)


def _rgba() -> bytes:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    return encode(Image.fromarray(rgba), "PNG")


def _gray_alpha() -> bytes:
    alpha = np.where(np.arange(30) < 15, 255, 0).astype(np.uint8)[None].repeat(20, 0)
    return encode(Image.fromarray(np.stack([RGB[..., 0], alpha], -1), mode="LA"), "PNG")


def _gray() -> bytes:
    return encode(Image.fromarray(RGB[..., 0]), "PNG")


def _one_bit() -> bytes:
    return encode(Image.fromarray(RGB[..., 0] > 127), "PNG")


FLOATS = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)


def _float_tiff() -> bytes:
    return encode(Image.fromarray(FLOATS, mode="F"), "TIFF")


def _animated() -> bytes:
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    return encode(Image.fromarray(RGB), "JPEG", exif=exif.tobytes(), quality=100)


def _equals(expected: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(image: np.ndarray) -> None:
        np.testing.assert_array_equal(image, expected)

    return check


def _check_corrupt_jpeg(image: np.ndarray) -> None:
    intact = np.asarray(Image.open(io.BytesIO(_jpeg())).convert("RGB"))
    assert image.shape == intact.shape
    assert np.abs(image.astype(int) - intact.astype(int)).max() > 0  # the damage is visible


def _check_cmyk(image: np.ndarray) -> None:
    assert image.shape == RGB.shape
    assert np.abs(image.astype(int) - RGB.astype(int)).mean() < 12  # JPEG-lossy, same picture


def _check_sixteen(image: np.ndarray) -> None:
    expected = np.clip(np.rint(SIXTEEN / 65535 * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image, np.repeat(expected[:, :, None], 3, axis=2))
    assert image.max() > 200  # the full 16-bit range was scaled, not clipped to 255


def _check_palette_transparent(image: np.ndarray) -> None:
    transparent = np.asarray(PALETTE) == 0
    assert transparent.any()
    assert (image[transparent] == 255).all()  # composited on white
    opaque = np.asarray(PALETTE.convert("RGB"))
    np.testing.assert_array_equal(image[~transparent], opaque[~transparent])


def _check_rgba(image: np.ndarray) -> None:
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])  # opaque red stays red
    np.testing.assert_array_equal(image[3, 0], [255, 255, 255])  # transparent becomes white


def _check_gray_alpha(image: np.ndarray) -> None:
    np.testing.assert_array_equal(image[:, :15, 0], RGB[:, :15, 0])
    assert (image[:, 15:] == 255).all()
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def _check_float(image: np.ndarray) -> None:
    expected = np.clip(FLOATS.astype(np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0], expected)


def _check_first_frame(image: np.ndarray) -> None:
    assert image.shape == (6, 6, 3) and image.mean() < 50  # frame 1 is dark, frame 2 bright


def _check_rotated(image: np.ndarray) -> None:
    assert image.shape == (30, 20, 3)  # 20×30 stored, shown (and loaded) rotated to 30×20


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------
CASES: tuple[ImageCase, ...] = (
    ImageCase("zero_byte", "an empty file", "empty.png", lambda: b"", refused="is empty (0 bytes)"),
    ImageCase(
        "not_an_image",
        "a text file named .png",
        "notes.png",
        lambda: b"not an image at all",
        refused="not an image format we can read",
    ),
    ImageCase(
        "wrong_extension",
        "a PNG file named .jpg",
        "photo.jpg",
        _png,
        check=_equals(RGB),
    ),
    ImageCase(
        "corrupt_png",
        "a PNG whose compressed pixel data is damaged",
        "corrupt.png",
        _corrupt_png,
        refused="damaged or truncated",
    ),
    ImageCase(
        "corrupt_jpeg",
        "a JPEG whose scan data is damaged",
        "corrupt.jpg",
        _corrupt_jpeg,
        check=_check_corrupt_jpeg,
    ),
    ImageCase(
        "truncated_png",
        "the first 60 bytes of a PNG",
        "truncated.png",
        lambda: _png()[:60],
        refused="damaged or truncated",
    ),
    ImageCase(
        "truncated_jpeg",
        "the first 200 bytes of a JPEG",
        "truncated.jpg",
        lambda: _jpeg()[:200],
        refused="could not be read",
    ),
    ImageCase(
        "decompression_bomb",
        "a small PNG declaring 6524×6524 pixels",
        "bomb.png",
        _bomb,
        refused="the limit is 40 MP",
    ),
    ImageCase(
        "extreme_aspect_ratio",
        "a 500×5 image",
        "strip.png",
        lambda: encode(Image.new("RGB", (500, 5)), "PNG"),
        refused="aspect ratio of 100:1",
    ),
    ImageCase("cmyk", "a CMYK JPEG", "print.jpg", _cmyk, check=_check_cmyk),
    ImageCase(
        "sixteen_bit", "a 16-bit grayscale PNG", "depth16.png", _sixteen, check=_check_sixteen
    ),
    ImageCase(
        "palette",
        "a 16-colour palette PNG",
        "palette.png",
        _palette,
        check=_equals(np.asarray(PALETTE.convert("RGB"))),
    ),
    ImageCase(
        "palette_transparency",
        "a palette PNG with a transparent colour",
        "palette_alpha.png",
        _palette_transparent,
        check=_check_palette_transparent,
    ),
    ImageCase("rgba", "an RGBA PNG, half transparent", "alpha.png", _rgba, check=_check_rgba),
    ImageCase(
        "gray_alpha",
        "a grayscale PNG with alpha (LA)",
        "gray_alpha.png",
        _gray_alpha,
        check=_check_gray_alpha,
    ),
    ImageCase(
        "grayscale",
        "an 8-bit grayscale PNG",
        "gray.png",
        _gray,
        check=_equals(np.repeat(RGB[..., :1], 3, axis=2)),
    ),
    ImageCase(
        "one_bit",
        "a 1-bit black-and-white PNG",
        "bw.png",
        _one_bit,
        check=_equals(np.repeat(np.where(RGB[..., :1] > 127, 255, 0).astype(np.uint8), 3, 2)),
    ),
    ImageCase(
        "float_tiff",
        "a 32-bit float TIFF with values 0–1",
        "float.tif",
        _float_tiff,
        check=_check_float,
    ),
    ImageCase(
        "animated_gif",
        "a two-frame animated GIF",
        "anim.gif",
        _animated,
        check=_check_first_frame,
    ),
    ImageCase(
        "exif_rotated",
        "a JPEG with EXIF orientation 6 (rotate 90°)",
        "rotated.jpg",
        _exif_rotated,
        check=_check_rotated,
    ),
)

BY_ID: dict[str, ImageCase] = {case.case_id: case for case in CASES}
