"""The click preview in a real viewer: the partial redraw shows what a full refresh shows, and the
accepted mask is the plain predictor's best mask."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam import SamPredictor  # noqa: E402


def test_preview_redraw_and_accepted_masks_match_predictor(click_viewer, tiny_model):
    viewer, ctl, img, truth = click_viewer
    p = SamPredictor(tiny_model, precision="fp32")
    p.set_image(img)
    rows, cols = np.nonzero(truth)
    rng = np.random.default_rng(1)
    for i in range(4):
        j = rng.integers(len(rows))
        ctl.add_point((rows[j], cols[j]))
        masks, scores, _ = p.predict(np.array([[cols[j], rows[j]]], float), np.array([1]))
        shown = ctl.current_mask()
        np.testing.assert_array_equal(shown, masks[int(np.argmax(scores))])
        layer = ctl.preview_layer
        np.testing.assert_array_equal(layer.data > 0, shown)
        partial = np.array(layer._slice.image.view, copy=True)
        if i == 0:  # the partial redraw is taken here (not the full-refresh fallback)
            from napari_sam.adapters.labels_io import _redraw_region

            assert _redraw_region(layer, (), (slice(0, 5), slice(0, 5)))
        layer.refresh()  # what napari shows after a full re-slice
        np.testing.assert_array_equal(partial, layer._slice.image.view)
        if i % 2:
            label_id = ctl.accept()
            np.testing.assert_array_equal(ctl.target_layer.data == label_id, masks[int(np.argmax(scores))]
                                          & (ctl.target_layer.data == label_id))
            assert (ctl.target_layer.data == label_id).sum() > 0
            assert not ctl.preview_layer.data.any()
        else:
            ctl.clear()
            assert not ctl.preview_layer.data.any()
