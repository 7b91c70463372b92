"""The batch dock widget, built directly (no npe2) on a real viewer; run under a virtual X display."""

from __future__ import annotations

import numpy as np
import pytest
from reference_models import two_disc_stack  # noqa: E402

pytestmark = pytest.mark.gui


def _stack(n_z=4, shape=(40, 48)):
    return two_disc_stack(n_z, shape)


def test_batch_widget_runs_a_stack_into_a_zarr_backed_labels_layer(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_SYNC", raising=False)  # the real napari worker thread
    import zarr

    from napari_sam.engine.automatic.slice_segmenter import otsu_labels
    from napari_sam.widgets.batch_widget import BatchWidget

    viewer = make_napari_viewer()
    img, truth = _stack()
    layer = viewer.add_image(img, name="stack", scale=(2.0, 1.0, 1.0))
    w = BatchWidget(viewer, segment_slice=otsu_labels)
    viewer.window.add_dock_widget(w)
    assert w._image.value is layer
    w._output.value = tmp_path / "out.zarr"
    job = w.run()
    assert job is not None
    qtbot.waitUntil(lambda: not w.running, timeout=30000)
    qtbot.waitUntil(lambda: "stack labels" in viewer.layers, timeout=5000)
    labels = viewer.layers["stack labels"]
    assert isinstance(labels.data, zarr.Array)  # backed by the output, not a dense copy
    assert labels.data.shape == truth.shape and tuple(labels.scale) == (2.0, 1.0, 1.0)
    assert len(np.unique(labels.data[:])) == 3
    assert "2 objects in 4 slices" in w._status.value
    # running again on the finished output is refused with a clear status, and nothing is added
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=30000)
    assert "exists" in w._status.value and len(viewer.layers) == 2


def test_batch_widget_2d_image_and_no_image(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.engine.automatic.slice_segmenter import otsu_labels
    from napari_sam.widgets.batch_widget import BatchWidget

    viewer = make_napari_viewer()
    w = BatchWidget(viewer, segment_slice=otsu_labels)
    assert w.run() is None and "pick an image" in w._status.value
    img, _ = _stack(1)
    viewer.add_image(img[0], name="plane")
    w._output.value = tmp_path / "plane.tif"
    w.run()
    lab = viewer.layers["plane labels"]
    assert lab.data.shape == (40, 48) and lab.data.max() == 2
