"""The image loader: every format users upload becomes uint8 (H, W, 3), or a clear ImageError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import explainers
from explainers.io.images import check_image_array
from explainers.registry import ParamSpec

from . import bad_images
from .bad_images import RGB, encode


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats(fmt):
    data = encode(Image.fromarray(RGB), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    image = explainers.load_image(data)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(image, RGB)


@pytest.mark.parametrize("case", bad_images.CASES, ids=lambda case: case.case_id)
def test_awkward_and_broken_images(case, tmp_path):
    """Each case from tests/bad_images.py, uploaded as a file and as bytes, is refused with its
    phrase or loaded as uint8 (H, W, 3) converted the way the case states."""
    data = case.build()
    path = tmp_path / case.file_name
    path.write_bytes(data)
    for source in (path, data):
        if case.refused is not None:
            with pytest.raises(explainers.ImageError) as caught:
                explainers.load_image(source)
            assert case.refused in str(caught.value)
            continue
        image = explainers.load_image(source)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.flags["C_CONTIGUOUS"]
        case.check(image)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    bomb = bad_images.BY_ID["decompression_bomb"].build()
    assert len(bomb) < 200_000  # tiny file, 43 MP declared

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(explainers.ImageError, match="MP"):
        explainers.load_image(bomb)


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
