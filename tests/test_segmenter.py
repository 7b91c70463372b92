"""The viewer-free Segmenter API: napari (row, col) order, slices, validation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import SamPredictor, Segmenter
from napari_sam.errors import InvalidImageError, InvalidPromptError


def test_rowcol_order_matches_predictor_xy(tiny_model, cells_image):
    img, _ = cells_image
    seg = Segmenter(model=tiny_model)
    seg.set_image(img)
    pred = seg.predict(points=[(50, 60), (140, 80)], labels=[1, 0], multimask=False)
    p = SamPredictor(tiny_model)
    p.set_image(img)
    masks, scores, logits = p.predict(np.array([[60.0, 50.0], [80.0, 140.0]]), np.array([1, 0]), multimask_output=False)
    np.testing.assert_array_equal(pred.masks, masks)
    np.testing.assert_allclose(pred.scores, scores)
    # the box is given as (row0, col0, row1, col1)
    b = seg.predict(box=(20, 30, 90, 100), multimask=False)
    bm, _, _ = p.predict(box=np.array([30, 20, 100, 90]), multimask_output=False)
    np.testing.assert_array_equal(b.masks, bm)


def test_stack_slices_are_embedded_separately(tiny_model, cells_image):
    img, _ = cells_image
    stack = np.stack([img, img[::-1].copy(), np.roll(img, 40, axis=1)])
    seg = Segmenter(model=tiny_model, cache_size=2)
    seg.set_image(stack, axes="zyx")
    assert seg.leading_shape == (3,) and seg.spatial_shape == img.shape
    e0 = seg.ensure_embedding(0).features
    e1 = seg.ensure_embedding(1).features
    assert not np.allclose(e0.numpy(), e1.numpy())
    seg.ensure_embedding(2)
    assert not seg.has_embedding(0)  # LRU of size 2 evicted the oldest
    mask = seg.segment(points=[(50, 60)], slice_index=1)
    assert mask.shape == img.shape and mask.dtype == bool
    with pytest.raises(InvalidPromptError, match="slice_index"):
        seg.segment(points=[(50, 60)])
    with pytest.raises(InvalidPromptError, match="not valid"):
        seg.segment(points=[(50, 60)], slice_index=3)


def test_stack_uses_one_intensity_rule(tiny_model, cells_image):
    img, _ = cells_image
    stack = np.stack([img, (img // 4).astype(np.uint16)])
    seg = Segmenter(model=tiny_model)
    seg.set_image(stack, axes="zyx")
    lo, hi = seg.intensity_limits()
    assert lo < float(np.percentile(img, 50)) < hi  # limits come from the whole stack


def test_bad_input(tiny_model):
    seg = Segmenter(model=tiny_model)
    with pytest.raises(InvalidImageError):
        seg.set_image(np.zeros(5))
    with pytest.raises(InvalidImageError):
        seg.set_image(np.zeros((0, 5)))
    with pytest.raises(InvalidImageError, match="No image"):
        seg.segment(points=[(1, 1)])
    seg.set_image(np.zeros((64, 64), np.uint8))
    with pytest.raises(InvalidPromptError, match="outside"):
        seg.segment(points=[(10, 100)])
    with pytest.raises(InvalidPromptError):
        seg.segment(points=[(1, 2, 3)])
    with pytest.raises(InvalidPromptError):
        seg.segment(box=(1, 2, 3))


def test_tiling_keywords_keep_the_positional_api(tiny_model):
    seg = Segmenter(tiny_model, None, None, None, 4, tile_shape=64, halo=8)
    seg.set_image(np.zeros((2, 100, 100), np.uint8), axes="zyx")
    assert seg.tile_grid.grid_shape == (2, 2) and seg.tile_grid.halo == (8, 8)
    assert seg.cache_size == 4 and not seg.store.persistent
    default = Segmenter(tiny_model)  # default tile = the model's input size (256), halo one eighth
    default.set_image(np.zeros((300, 100), np.uint8))
    assert default.tile_grid.tile_shape == (256, 256) and default.tile_grid.halo == (32, 32)
    assert default.tile_grid.grid_shape == (2, 1)
    assert [t.shape for t in default.tile_grid] == [(256, 100), (256, 100)]
    default.set_tiling("full")
    assert len(default.tile_grid) == 1
    with pytest.raises(InvalidImageError, match="twice the halo"):
        default.set_tiling(16, halo=8)
    assert len(default.tile_grid) == 1  # a rejected setting changes nothing
    with pytest.raises(InvalidImageError, match="rgb=True"):
        default.set_image(np.zeros((30, 30), np.uint8), rgb=True)
