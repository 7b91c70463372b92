"""Tile grids (pure geometry) and tiled prediction with the Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam import SamPredictor, Segmenter
from napari_sam.engine.prediction.tiling import TileGrid, check_tiling
from napari_sam.errors import InvalidImageError, InvalidPromptError


@st.composite
def grids(draw):
    th = draw(st.integers(24, 300))
    tw = draw(st.integers(24, 300))
    hh = draw(st.integers(0, (th - 1) // 2))
    hw = draw(st.integers(0, (tw - 1) // 2))
    h = draw(st.integers(1, 700))
    w = draw(st.integers(1, 700))
    return TileGrid((h, w), (th, tw), (hh, hw))


@settings(max_examples=150, deadline=None)
@given(grids())
def test_grid_geometry(grid):
    h, w = grid.image_shape
    owner = np.zeros((h, w), np.int32)
    covered = np.zeros((h, w), bool)
    ids = np.arange(h * w).reshape(h, w)
    for tile in grid:
        (ro0, ro1), (co0, co1) = tile.outer
        (ri0, ri1), (ci0, ci1) = tile.inner
        # outer crops are inside the image and have the tile shape (or the whole axis)
        assert 0 <= ro0 < ro1 <= h and 0 <= co0 < co1 <= w
        assert tile.shape == (min(grid.tile_shape[0], h), min(grid.tile_shape[1], w))
        # inner regions are non-empty and inside the outer crop, with the halo kept
        assert ro0 <= ri0 < ri1 <= ro1 and co0 <= ci0 < ci1 <= co1
        for start, istart, stop, istop, halo, size in (
            (ro0, ri0, ro1, ri1, grid.halo[0], h),
            (co0, ci0, co1, ci1, grid.halo[1], w),
        ):
            if istart > 0:
                assert istart - start >= halo
            if istop < size:
                assert stop - istop >= halo
        owner[tile.inner_slices] += 1
        covered[tile.outer_slices] = True
        np.testing.assert_array_equal(ids[tile.outer_slices][tile.inner_in_crop], ids[tile.inner_slices])
    assert covered.all()
    assert (owner == 1).all()  # inner regions partition the image
    assert len(grid) == grid.grid_shape[0] * grid.grid_shape[1]


@settings(max_examples=100, deadline=None)
@given(grids(), st.data())
def test_point_routing_picks_a_tile_holding_the_point(grid, data):
    h, w = grid.image_shape
    r = data.draw(st.integers(0, h - 1))
    c = data.draw(st.integers(0, w - 1))
    p = np.array([r, c], float)
    tile = grid.best_tile((p, p))
    assert tile is not None  # a single point always lies in some inner region
    assert tile.outer[0][0] <= r < tile.outer[0][1] and tile.outer[1][0] <= c < tile.outer[1][1]
    owner = grid.tile_containing(p)
    assert owner.inner[0][0] <= r < owner.inner[0][1] and owner.inner[1][0] <= c < owner.inner[1][1]


@pytest.mark.parametrize(
    "tile, halo, match",
    [((64, 64), (32, 8), "twice the halo"), ((64, 64), (-1, 0), "halo must be >= 0"), ((0, 64), 0, "positive"),
     ((64, 64), (40, 40), "twice the halo"), ("big", 8, "pair")],
)
def test_bad_tiling(tile, halo, match):
    with pytest.raises(InvalidImageError, match=match):
        check_tiling(tile, halo)


def test_bad_tiling_in_segmenter(tiny_model):
    with pytest.raises(InvalidImageError, match="twice the halo"):
        Segmenter(model=tiny_model, tile_shape=(64, 64), halo=32)
    with pytest.raises(InvalidImageError, match="halo"):
        Segmenter(model=tiny_model, tile_shape=(64, 64), halo=(-2, 4))
    seg = Segmenter(model=tiny_model)
    with pytest.raises(InvalidImageError, match="fewer than 2"):
        seg.set_image(np.zeros(300, np.uint8))


def _big_image(cells_image):
    """A 200 x 480 uint16 image: two copies of the cells side by side."""
    img, labels = cells_image
    return np.concatenate([img, img], axis=1), np.concatenate([labels, labels + 10 * (labels > 0)], axis=1)


def test_interior_object_equals_crop_alone(tiny_model, cells_image):
    big, _ = _big_image(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape=(128, 128), halo=24)
    seg.set_image(big)
    grid = seg.tile_grid
    assert len(grid) > 1
    point = np.array([140.0, 300.0])  # the third cell's copy: well inside some tile
    pred = seg.predict(points=[point], multimask=True)
    tile = grid.tiles[grid.flat_index(pred.tile)]
    assert tile.inner[0][0] <= point[0] < tile.inner[0][1] and tile.inner[1][0] <= point[1] < tile.inner[1][1]
    crop = big[tile.outer_slices]
    ref = SamPredictor(tiny_model)
    ref.set_image(crop, intensity_limits=seg.intensity_limits())
    r0, c0 = tile.origin
    masks, scores, logits = ref.predict(np.array([[point[1] - c0, point[0] - r0]]), np.array([1]))
    expected = np.zeros((masks.shape[0], *big.shape), bool)
    expected[(slice(None), *tile.outer_slices)] = masks
    np.testing.assert_array_equal(pred.masks, expected)
    np.testing.assert_allclose(pred.scores, scores, rtol=1e-5)
    np.testing.assert_allclose(pred.logits, logits, rtol=1e-4, atol=1e-4)
    # the embedding was computed only for the tile that was needed
    assert sum(seg.store.in_memory(0, i) for i in range(len(grid))) == 1


def test_box_spanning_two_tiles_is_one_merged_object(tiny_model, cells_image):
    big, _ = _big_image(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape=(200, 300), halo=(0, 32))
    seg.set_image(big)
    grid = seg.tile_grid
    assert grid.grid_shape == (1, 2)
    cut = grid.tiles[0].inner[1][1]
    box = (20, cut - 60, 180, cut + 60)  # straddles the cut between the two tiles
    pred = seg.predict(box=box, multimask=False)
    assert pred.tile is None and pred.logits is None
    assert pred.masks.shape == (1, *big.shape)
    # the merged mask is the union of each tile's own prediction, restricted to its inner region
    expected = np.zeros(big.shape, bool)
    for tile in grid:
        crop = big[tile.outer_slices]
        ref = SamPredictor(tiny_model)
        ref.set_image(crop, intensity_limits=seg.intensity_limits())
        r0, c0 = tile.origin
        b = np.clip(np.array([box[1] - c0, box[0] - r0, box[3] - c0, box[2] - r0], float), -0.5,
                    [crop.shape[1] - 0.5, crop.shape[0] - 0.5] * 2)
        m, _, _ = ref.predict(box=b, multimask_output=False)
        expected[tile.inner_slices] = m[0][tile.inner_in_crop]
    np.testing.assert_array_equal(pred.masks[0], expected)
    # nothing outside the box's tiles' inner regions, and both tiles contributed pixels
    assert pred.masks[0][:, :cut].any() and pred.masks[0][:, cut:].any()
    # mask_input cannot refine a merged prediction
    with pytest.raises(InvalidPromptError, match="several tiles"):
        seg.predict(box=box, mask_input=np.zeros((64, 64), np.float32))


def test_single_tile_logits_refine_in_the_same_tile(tiny_model, cells_image):
    big, _ = _big_image(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape=(128, 128), halo=24)
    seg.set_image(big)
    first = seg.predict(points=[(140, 300)], multimask=True)
    again = seg.predict(points=[(140, 300)], mask_input=first.logits[first.best], tile=first.tile, multimask=False)
    assert again.tile == first.tile and again.masks.shape == (1, *big.shape)
    with pytest.raises(InvalidPromptError, match="not in the tile grid"):
        seg.predict(points=[(140, 300)], tile=(9, 9))


def test_full_setting_disables_tiling(tiny_model, cells_image):
    big, _ = _big_image(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape="full")
    seg.set_image(big)
    assert len(seg.tile_grid) == 1
    p = SamPredictor(tiny_model)
    p.set_image(big)
    np.testing.assert_array_equal(
        seg.predict(points=[(140, 300)]).masks, p.predict(np.array([[300.0, 140.0]]), np.array([1]))[0]
    )
    with pytest.raises(InvalidImageError, match="full"):
        Segmenter(model=tiny_model, tile_shape="whole")
