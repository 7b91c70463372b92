"""The fast click path: lazy candidates, region-limited upscaling and the partial preview redraw
give exactly the masks of the plain predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor, Segmenter
from napari_sam.engine.prediction.candidates import CandidateMasks
from napari_sam.model.mask_decoder import upscale_masks


def _full_upscale_masks(low, img_size, input_size, original_size):
    """The upscaled logits over the whole image, thresholded afterwards (no region shortcut)."""
    return upscale_masks(low, img_size, input_size, original_size, threshold=None) > 0


@pytest.mark.parametrize("seed", range(4))
def test_region_upscale_equals_full_upscale(seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 3, 64, 64, generator=g) * 2 - 4
    low[0, 0, 10:20, 30:41] += 8  # one object
    low[0, 1] = torch.nn.functional.avg_pool2d(torch.randn(1, 64, 64, generator=g), 7, 1, 3) * 30  # many blobs
    low[0, 2] = -1.0  # nothing: an all-False mask
    for input_size, original in (((256, 256), (300, 300)), ((256, 180), (411, 289)), ((170, 256), (97, 145))):
        region = upscale_masks(low, 256, input_size, original, threshold=0.0)
        full = _full_upscale_masks(low, 256, input_size, original)
        assert region.shape == full.shape and region[0, 0].any() and not region[0, 2].any()
        assert torch.equal(region, full)


def test_lazy_candidates_equal_predictor_masks(tiny_model, cells_image):
    img, truth = cells_image
    p = SamPredictor(tiny_model)
    p.set_image(img)
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(truth)
    for _ in range(6):
        j = rng.integers(len(rows))
        xy = np.array([[cols[j], rows[j]]], float)
        masks, scores, logits = p.predict(xy, np.array([1]))
        lazy, lscores, llogits = p.predict_candidates(xy, np.array([1]))
        assert isinstance(lazy, CandidateMasks) and lazy.computed == ()
        best = int(np.argmax(lscores))
        np.testing.assert_array_equal(lazy[best], masks[best])
        assert lazy.computed == (best,)  # only the shown candidate was upscaled
        np.testing.assert_array_equal(np.asarray(lazy), masks)
        np.testing.assert_array_equal(lscores, scores)
        np.testing.assert_array_equal(llogits, logits)


def test_segmenter_lazy_prediction_on_a_tiled_slice(tiny_model, cells_image):
    img, _ = cells_image
    seg = Segmenter(model=tiny_model, tile_shape=128, halo=16)
    seg.set_image(img)
    assert len(seg.tile_grid) > 1
    for points in ([(50, 60)], [(150, 180)]):
        eager = seg.predict(points=points)
        lazy = seg.predict(points=points, lazy=True)
        assert isinstance(lazy.masks, CandidateMasks) and lazy.tile == eager.tile
        np.testing.assert_array_equal(lazy.best_mask, eager.best_mask)
        np.testing.assert_array_equal(np.asarray(lazy.masks), eager.masks)
