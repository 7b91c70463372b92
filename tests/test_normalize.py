"""The microscopy normalisation rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam.engine.images.normalize import intensity_range, to_uint8_rgb
from napari_sam.errors import InvalidImageError


def test_uint8_rgb_is_untouched():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_rgb(img), img)


def test_uint16_uses_robust_percentiles():
    img = np.full((100, 100), 1000, np.uint16)
    img[:50] = 2000
    img[0, 0] = 65535  # a single hot pixel must not squash the contrast
    out = to_uint8_rgb(img)
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    assert out[60, 0, 0] == 0 and out[10, 10, 0] == 255


def test_given_limits_are_used_not_restretched():
    img = np.linspace(0, 100, 100, dtype=np.float32).reshape(10, 10)
    out = to_uint8_rgb(img, limits=(0.0, 200.0))
    assert out.max() == pytest.approx(128, abs=1)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.1, 1e4), st.floats(-1e3, 1e3))
def test_affine_intensity_changes_do_not_change_the_input(scale, offset):
    rng = np.random.default_rng(1)
    img = rng.normal(100, 20, (32, 32))
    a = to_uint8_rgb(img)
    b = to_uint8_rgb(img * scale + offset)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_constant_image_does_not_divide_by_zero():
    out = to_uint8_rgb(np.full((8, 8), 7.0))
    assert (out == 0).all()


def test_nan_refused():
    with pytest.raises(InvalidImageError, match="NaN"):
        intensity_range(np.array([1.0, np.nan]))
