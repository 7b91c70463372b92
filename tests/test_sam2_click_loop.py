"""SAM 2.1 in the click loop: the Segmenter gives SAM2ImagePredictor's masks, through the same
embedding cache and tiling as SAM 1 (tiny random hiera_tiny at 256 px: seconds per test)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam.engine.prediction.segmenter import Segmenter
from napari_sam.engine.sam2.image_predictor import SAM2ImagePredictor
from napari_sam.engine.store.embedding_store import CacheWarning
from napari_sam.errors import CacheError, InvalidPromptError
from sam2_state import EncoderCalls


@pytest.fixture(scope="module")
def sam2_model():
    from sam2_state import tiny_sam2_model

    return tiny_sam2_model()


@pytest.fixture(scope="module")
def rgb():
    """A 180 x 240 RGB uint8 image with bright blobs on noise."""
    from sam2_state import blob_image

    return blob_image((180, 240), ((50, 60, 25, 35), (120, 170, 30, 25), (140, 50, 20, 20)), seed=1)


def _direct(model, image, **prompts):
    p = SAM2ImagePredictor(model)
    p.set_image(image)
    return p.predict(**prompts)


def test_clicks_boxes_and_refinement_equal_the_image_predictor(sam2_model, rgb):
    seg = Segmenter(model=sam2_model, tile_shape="full")
    seg.set_image(rgb)
    # one positive click (multimask), as napari's (row, col); SAM 2 gets (x, y)
    pred = seg.predict(points=[(50, 60)], multimask=True)
    masks, scores, low = _direct(sam2_model, rgb, point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 180, 240) and masks.any() and pred.masks.dtype == bool
    np.testing.assert_array_equal(pred.masks, masks)
    np.testing.assert_array_equal(pred.scores, scores)
    np.testing.assert_array_equal(pred.logits, low)
    # a negative click, a box, and the previous low-res logits fed back (mask refinement)
    again = seg.predict(points=[(50, 60), (120, 170)], labels=[1, 0], box=(20, 20, 90, 110),
                        mask_input=pred.logits[pred.best], multimask=False)
    m2, s2, l2 = _direct(sam2_model, rgb, point_coords=np.array([[60.0, 50.0], [170.0, 120.0]]),
                         point_labels=np.array([1, 0]), box=np.array([20.0, 20.0, 110.0, 90.0]),
                         mask_input=low[np.argmax(scores)][None], multimask_output=False)
    np.testing.assert_array_equal(again.masks, m2)
    np.testing.assert_array_equal(again.scores, s2)
    # the lazy candidates (what a click shows) are the same masks
    lazy = seg.predict(points=[(50, 60)], multimask=True, lazy=True)
    np.testing.assert_array_equal(lazy.masks[lazy.best], masks[np.argmax(scores)])


def test_features_are_cached_in_memory_with_all_levels(sam2_model, rgb):
    stack = np.stack([rgb, rgb[::-1].copy()])
    seg = Segmenter(model=sam2_model, tile_shape="full", cache_size=1)
    seg.set_image(stack)
    calls = EncoderCalls(sam2_model)
    try:
        seg.predict(points=[(50, 60)], slice_index=0)
        seg.predict(points=[(60, 70)], labels=[0], box=(10, 10, 100, 100), slice_index=0)
        assert calls.n == 1  # the second prompt reused the cached features
        emb = seg.ensure_embedding(0)
        assert len(emb.high_res) == 2 and emb.input_size == (256, 256)
        assert seg.cache_info()["memory_bytes"] == emb.nbytes  # every level counted
        seg.predict(points=[(50, 60)], slice_index=1)
        assert calls.n == 2
        # the memory bound is in whole SAM 2 entries (all three levels): slice 0 was evicted
        assert not seg.store.in_memory(0, 0) and seg.store.in_memory(1, 0)
    finally:
        calls.close()


def test_disk_cache_refuses_sam2_features_and_family_is_in_the_signature(sam2_model, rgb, tmp_path, tiny_model):
    with pytest.warns(CacheWarning, match="SAM 2.1 features .* not written to disk yet"):
        seg = Segmenter(model=sam2_model, tile_shape="full", cache_dir=tmp_path / "cache")
        seg.set_image(rgb)
        pred = seg.predict(points=[(50, 60)])
    assert seg.cache_info()["group"] is None and pred.masks.any()
    assert not any((tmp_path / "cache").glob("*.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # said once per store, not at every image
        seg.set_image(rgb[::-1].copy())
        seg.predict(points=[(50, 60)])
    seg._store_bound = False
    seg.store.on_error = "raise"
    with pytest.raises(CacheError, match="SAM 2.1 features"):
        seg.cache_info()
    sam1 = Segmenter(model=tiny_model, tile_shape="full")
    sam1.set_image(rgb)
    seg2 = Segmenter(model=sam2_model, tile_shape="full")
    seg2.set_image(rgb)
    a, b = sam1._signature(), seg2._signature()
    assert (a["family"], b["family"]) == ("sam", "sam2") and b["model"] == "sam2.1_hiera_tiny@256"


def test_tiled_slice_answers_from_one_tile_like_sam1(sam2_model, rgb):
    big = np.concatenate([rgb, rgb], axis=1)  # 180 x 480: two 256-px tiles wide
    seg = Segmenter(model=sam2_model, tile_shape=(180, 256), halo=32)
    seg.set_image(big)
    grid = seg.tile_grid
    assert len(grid) > 1
    point = np.array([120.0, 170.0])
    pred = seg.predict(points=[point], multimask=True)
    tile = grid.tiles[grid.flat_index(pred.tile)]
    r0, c0 = tile.origin
    masks, scores, low = _direct(sam2_model, big[tile.outer_slices],
                                 point_coords=np.array([[point[1] - c0, point[0] - r0]]), point_labels=np.array([1]))
    expected = np.zeros((masks.shape[0], *big.shape[:2]), bool)
    expected[(slice(None), *tile.outer_slices)] = masks
    np.testing.assert_array_equal(pred.masks, expected)
    np.testing.assert_array_equal(pred.logits, low)
    refined = seg.predict(points=[point], mask_input=pred.logits[pred.best], tile=pred.tile, multimask=False)
    assert refined.tile == pred.tile


def test_what_sam2_does_not_do_is_said(sam2_model, rgb):
    with pytest.warns(RuntimeWarning, match="run in fp32"):
        seg = Segmenter(model=sam2_model, precision="int8", tile_shape="full")
    assert seg.options.precision == "fp32"
    seg.set_image(rgb)
    with pytest.raises(InvalidPromptError, match="mask_input must have shape"):
        seg.predict(mask_input=np.zeros((10, 10), np.float32))
    from napari_sam.engine.automatic.slice_segmenter import label_slice_steps
    from napari_sam.engine.automatic.settings import AutoSettings
    from napari_sam.errors import NapariSamError

    with pytest.raises(NapariSamError, match="SAM 2.1"):
        from napari_sam.engine.progress import run_blocking

        run_blocking(label_slice_steps(seg.model, rgb, AutoSettings(), options=seg.options))
