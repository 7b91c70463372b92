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


def _wide_variants(base: np.ndarray):
    """``base`` (uint16) moved to large magnitudes: the contrast is the same, only the offset differs."""
    b = base.astype(np.int64)
    return {
        "float64 + 1e12": base.astype(np.float64) + 1e12,
        "int64 near max": b + (np.iinfo(np.int64).max - 70_000),
        "int64 near min": b + np.iinfo(np.int64).min,
        "uint64 near max": base.astype(np.uint64) + np.uint64(np.iinfo(np.uint64).max - 70_000),
    }


def test_large_magnitudes_keep_their_contrast(cells_image):
    """The range is subtracted before narrowing: a float32 cast first gave a constant image."""
    img, _ = cells_image
    want = to_uint8_rgb(img)
    assert want.std() > 20
    for name, big in _wide_variants(img).items():
        got = to_uint8_rgb(big)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_wide_integer_limits_are_exact():
    img = np.array([[0, 5], [10, 15]], np.int64) + (np.iinfo(np.int64).max - 15)
    lo, hi = intensity_range(img)
    assert isinstance(lo, int) and hi - lo == 15  # float64 limits would both round to 2**63
    out = to_uint8_rgb(img, limits=(lo, hi))[..., 0]
    np.testing.assert_array_equal(out, [[0, 85], [170, 255]])
