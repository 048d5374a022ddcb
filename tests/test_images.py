"""The image loader: every format users upload becomes uint8 (H, W, 3), or a clear ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import explainers
from explainers.images import MAX_IMAGE_PIXELS, check_image_array
from explainers.registry import ParamSpec


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats(fmt):
    data = encode(Image.fromarray(RGB), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    image = explainers.load_image(data)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(image, RGB)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom transparent
    image = explainers.load_image(encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[3, 0], [255, 255, 255])


def test_grayscale_palette_cmyk_and_16_bit():
    gray = explainers.load_image(encode(Image.fromarray(RGB[..., 0]), "PNG"))
    np.testing.assert_array_equal(gray[..., 0], RGB[..., 0])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert explainers.load_image(encode(palette, "PNG")).shape == (20, 30, 3)
    cmyk = Image.fromarray(RGB).convert("CMYK")
    converted = explainers.load_image(encode(cmyk, "JPEG", quality=100))
    assert np.abs(converted.astype(int) - RGB.astype(int)).mean() < 12
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    image16 = explainers.load_image(encode(Image.fromarray(sixteen), "PNG"))
    np.testing.assert_array_equal(
        image16[..., 0], np.clip(np.rint(sixteen / 65535 * 255), 0, 255).astype(np.uint8)
    )
    assert image16.max() > 200  # the full 16-bit range was scaled, not clipped to 255


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image = explainers.load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=100))
    assert image.shape == (30, 20, 3)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = explainers.load_image(buffer.getvalue())
    assert image.mean() < 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not an image format"),
        (encode(Image.fromarray(RGB), "PNG")[:60], "damaged or truncated|could not be read"),
        (encode(Image.fromarray(RGB), "JPEG")[:200], "damaged or truncated|could not be read"),
    ],
)
def test_bad_bytes_are_refused_clearly(data, message):
    with pytest.raises(explainers.ImageError, match=message):
        explainers.load_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_IMAGE_PIXELS**0.5) + 200
    bomb = encode(Image.new("1", (side, side)), "PNG")  # tiny file, huge declared size
    assert len(bomb) < 200_000
    with pytest.raises(explainers.ImageError, match="MP"):
        explainers.load_image(bomb)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(explainers.ImageError, match="aspect ratio"):
        explainers.load_image(encode(Image.new("RGB", (500, 5)), "PNG"))


def test_missing_path(tmp_path):
    with pytest.raises(explainers.ImageError, match="No image file"):
        explainers.load_image(tmp_path / "nope.png")


def test_check_image_array():
    assert check_image_array(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    assert check_image_array(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)
    with pytest.raises(explainers.ImageError, match="dtype float64"):
        check_image_array(np.zeros((3, 4, 3)))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape_as_anything_but_image_error(data):
    try:
        image = explainers.load_image(data)
    except explainers.ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["L", "RGB", "RGBA", "P", "1"]))
def test_any_small_image_in_any_mode_loads(height, width, mode):
    img = Image.new(mode, (width, height))
    if max(width, height) / min(width, height) > 20:
        with pytest.raises(explainers.ImageError, match="aspect ratio"):
            explainers.load_image(encode(img, "PNG"))
        return
    assert explainers.load_image(encode(img, "PNG")).shape == (height, width, 3)


# ------------------------------------------------------------------------------------------------
# Parameter validation, property-based
# ------------------------------------------------------------------------------------------------
STEPS = ParamSpec("steps", "int", 32, "", low=1, high=1024)
LEVEL = ParamSpec("noise_level", "float", 0.15, "", low=0.0, high=1.0)


@given(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
        st.booleans(),
        st.none(),
    )
)
def test_param_coercion_accepts_only_valid_values(value):
    for spec in (STEPS, LEVEL):
        try:
            result = spec.coerce(value)
        except explainers.ParameterError as error:
            assert spec.name in str(error)
            continue
        assert spec.low <= result <= spec.high
        assert isinstance(result, int if spec.kind == "int" else float)
        assert not isinstance(value, bool)


def test_param_coercion_of_cli_strings():
    assert STEPS.coerce("16") == 16
    assert LEVEL.coerce(" 0.5 ") == 0.5
    for bad in ("nan", "inf", "1.5", "abc", "2000"):
        with pytest.raises(explainers.ParameterError, match="steps"):
            STEPS.coerce(bad)
