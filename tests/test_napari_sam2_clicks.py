"""The main widget's click loop with a SAM 2.1 model: offered in the model list, previews and
accepted labels equal SAM2ImagePredictor's masks, negative clicks, boxes and label correction work."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


@pytest.fixture(scope="module")
def sam2_model():
    from sam2_state import tiny_sam2_model

    return tiny_sam2_model()


def _direct(model, image, points, labels, box=None, multimask=True):
    from napari_sam import SAM2ImagePredictor

    p = SAM2ImagePredictor(model)
    p.set_image(image)
    xy = np.asarray(points, float)[:, ::-1]
    masks, scores, _ = p.predict(xy, np.asarray(labels), box=box, multimask_output=multimask)
    return masks[int(np.argmax(scores))]


def test_sam2_model_in_the_click_loop(make_napari_viewer, monkeypatch, sam2_model):
    import napari_sam.widgets.main_widget as mw
    from napari_sam.samples import synthetic_cells

    monkeypatch.setattr(mw, "_default_model", lambda: None)
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    viewer = make_napari_viewer()
    gray, truth = synthetic_cells((150, 190), n_cells=5, seed=2)
    lo, hi = float(gray.min()), float(gray.max())
    img = np.repeat(((gray - lo) / (hi - lo) * 255).astype(np.uint8)[..., None], 3, axis=2)  # uint8 RGB
    viewer.add_image(img, name="cells", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    assert "sam2.1_hiera_tiny" in widget._picker.combo.choices  # offered beside the SAM 1 models
    widget.set_model(sam2_model, name="sam2-random", precision="int8")
    ctl = widget.controller
    assert ctl.segmenter.options.precision == "fp32"
    assert "sam2-random" in widget._timing.value and "fp32" in widget._timing.value

    rows, cols = np.nonzero(truth == 1)
    click = (float(np.median(rows)), float(np.median(cols)))
    ctl.add_point(click)
    expected = _direct(sam2_model, img, [click], [1])
    np.testing.assert_array_equal(ctl.current_mask(), expected)
    far = (click[0], min(click[1] + 40.0, 189.0))
    ctl.add_point(far, positive=False)
    expected = _direct(sam2_model, img, [click, far], [1, 0], multimask=False)
    np.testing.assert_array_equal(ctl.current_mask(), expected)
    label_id = ctl.accept()
    np.testing.assert_array_equal(ctl.target_layer.data == label_id, expected)

    box = (rows.min() - 3.0, cols.min() - 3.0, rows.max() + 3.0, cols.max() + 3.0)
    ctl.add_box(box)
    expected_box = _direct(sam2_model, img, np.zeros((0, 2)), np.zeros(0, int),
                           box=np.array([box[1], box[0], box[3], box[2]]), multimask=False)
    np.testing.assert_array_equal(ctl.current_mask(), expected_box)
    ctl.clear()

    # correction of a committed label: its mask becomes SAM 2's mask prompt, a click refines it
    assert (ctl.target_layer.data == label_id).any()
    ctl.edit_label(label_id)
    ctl.add_point(click)
    assert ctl.current_mask() is not None
    assert ctl.accept() == label_id
