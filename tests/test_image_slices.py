"""ImageSlices: slice keys, flat numbering, reads and intensity limits of (..., H, W[, C]) arrays."""

import numpy as np
import pytest

from napari_sam.engine.images.image_slices import FULL_SLICE_SAMPLE_PIXELS, ImageSlices, level0
from napari_sam.engine.prediction.tiling import TileGrid
from napari_sam.errors import InvalidImageError, InvalidPromptError


def test_keys_and_flat_numbering_round_trip():
    s = ImageSlices(np.zeros((2, 3, 20, 30), np.uint16))
    assert s.spatial_shape == (20, 30) and s.leading_shape == (2, 3) and s.n_slices == 6
    for flat in range(6):
        key = s.unflat(flat)
        assert s.key(key) == key and s.flat(key) == flat
    assert s.unflat(4) == (1, 1)
    with pytest.raises(InvalidPromptError, match="slice_index"):
        s.key(None)  # 6 slices: which one?
    with pytest.raises(InvalidPromptError, match="not valid"):
        s.key((2, 0))
    with pytest.raises(InvalidPromptError, match="not valid"):
        s.key(1)  # one index for two slice axes


def test_rgb_guess_and_checks():
    assert ImageSlices(np.zeros((20, 30, 3), np.uint8)).is_rgb
    assert not ImageSlices(np.zeros((3, 20, 30), np.uint8)).is_rgb  # a 3-slice stack, not colour
    assert ImageSlices(np.zeros((20, 30, 3), np.uint8)).key(None) == ()
    with pytest.raises(InvalidImageError, match="last axis"):
        ImageSlices(np.zeros((20, 30, 5)), rgb=True)
    with pytest.raises(InvalidImageError, match="fewer than 2"):
        ImageSlices(np.zeros(5))
    with pytest.raises(InvalidImageError, match="empty"):
        ImageSlices(np.zeros((0, 5)))


def test_multiscale_means_level0():
    big, small = np.zeros((40, 40)), np.zeros((20, 20))
    assert level0([big, small]) is big
    assert ImageSlices([big, small]).spatial_shape == (40, 40)


def test_reads_a_slice_and_a_tile_crop():
    data = np.arange(2 * 50 * 60, dtype=np.float32).reshape(2, 50, 60)
    s = ImageSlices(data)
    np.testing.assert_array_equal(s.read_slice((1,)), data[1])
    tile = next(iter(TileGrid((50, 60), (32, 32), (4, 4))))
    np.testing.assert_array_equal(s.read_tile((1,), tile), data[1][tile.outer_slices])


def test_intensity_limits_uint8_none_else_cached_and_sampled_by_windows():
    assert ImageSlices(np.zeros((10, 10), np.uint8)).intensity_limits() is None
    rng = np.random.default_rng(0)
    s = ImageSlices(rng.normal(100, 10, (3, 40, 40)).astype(np.float32))
    lo, hi = s.intensity_limits()
    assert 50 < lo < 100 < hi < 150
    assert s.intensity_limits() == (lo, hi)  # computed once

    class Recording:  # an array that records which regions were read
        shape, dtype, ndim = (1, 2100, 2100), np.dtype(np.uint16), 3

        def __init__(self):
            self.reads = []

        def __getitem__(self, idx):
            self.reads.append(idx)
            rows, cols = idx[1], idx[2]
            return np.ones((rows.stop - rows.start, cols.stop - cols.start), np.uint16)

    assert 2100 * 2100 > FULL_SLICE_SAMPLE_PIXELS
    arr = Recording()
    ImageSlices(arr).intensity_limits()
    assert len(arr.reads) == 16 and all(r[1].stop - r[1].start == 256 for r in arr.reads)
