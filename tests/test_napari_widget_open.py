"""The dock widget opens at once (no torch on the GUI thread), clicks made while the model
loads or the image embeds are answered once ready, and a click followed by deleting layers
does not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam import Segmenter  # noqa: E402
from napari_sam.samples import synthetic_cells  # noqa: E402

PLUGIN, WIDGET = "napari-sam-lab", "Segment Anything"

OPEN_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import napari
    import_napari = time.perf_counter() - t0
    viewer = napari.Viewer(show=False)
    t0 = time.perf_counter()
    _, w = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    open_empty = time.perf_counter() - t0
    torch_after_open = "torch" in sys.modules
    import numpy as np
    viewer2 = napari.Viewer(show=False)
    viewer2.add_image(np.zeros((64, 64), np.uint16), name="img")
    t0 = time.perf_counter()  # the widget picks the image and starts loading the model in a worker
    _, w2 = viewer2.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    open_with_image = time.perf_counter() - t0
    print(json.dumps(dict(import_napari=import_napari, open_empty=open_empty, open_with_image=open_with_image,
                          torch_after_open=torch_after_open)), flush=True)
    from qtpy.QtWidgets import QApplication
    t0 = time.perf_counter()
    while (w.busy or w2.busy) and time.perf_counter() - t0 < 120:  # let the model load finish before exiting
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.close()
    viewer2.close()
    """
)


def test_dock_widget_opens_without_torch_in_under_two_seconds():
    env = dict(os.environ, NAPARI_SAM_SYNC="0")
    out = subprocess.run([sys.executable, "-c", OPEN_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["torch_after_open"], "opening the widget imported torch on the GUI thread"
    # budget: 2 s, or the time importing napari took when the machine is slower than that
    budget = max(2.0, r["import_napari"])
    assert r["open_empty"] < budget, r
    assert r["open_with_image"] < budget, r


@pytest.fixture()
def viewer_and_widget(make_napari_viewer, monkeypatch):
    import napari_sam.widgets.main_widget as mw

    monkeypatch.setattr(mw, "_default_model", lambda: None)
    viewer = make_napari_viewer()
    img, truth = synthetic_cells((96, 112), n_cells=4, seed=2)
    viewer.add_image(img, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget, img, truth


def _a_cell_pixel(truth):
    rows, cols = np.nonzero(truth)
    return float(rows[len(rows) // 2]), float(cols[len(cols) // 2])


def test_click_before_the_model_is_loaded_is_answered(viewer_and_widget, monkeypatch, tiny_model):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    viewer, widget, img, truth = viewer_and_widget
    ctl = widget.controller
    assert ctl.image_layer is viewer.layers["cells"] and ctl.segmenter is None
    point = _a_cell_pixel(truth)
    ctl.add_point(point)  # no model yet: queued, not lost
    assert ctl.current_mask() is None and "model" in widget._status.value.lower()
    widget.set_model(tiny_model, name="tiny-random", precision="fp32")  # loads, embeds, then answers
    seg = Segmenter(model=tiny_model, precision="fp32")
    seg.set_image(img)
    np.testing.assert_array_equal(ctl.current_mask(), seg.segment(points=[point]))


def test_click_during_embedding_in_worker_is_answered(viewer_and_widget, qtbot, monkeypatch, tiny_model):
    monkeypatch.delenv("NAPARI_SAM_SYNC", raising=False)
    viewer, widget, img, truth = viewer_and_widget
    ctl = widget.controller
    qtbot.waitUntil(lambda: ctl.image_layer is not None, timeout=10000)  # picked once the widget is shown
    widget.set_model(tiny_model, name="tiny-random", precision="fp32")  # the embedding runs in a worker
    point = _a_cell_pixel(truth)
    ctl.add_point(point)
    qtbot.waitUntil(lambda: ctl.current_mask() is not None, timeout=60000)
    seg = Segmenter(model=tiny_model, precision="fp32")
    seg.set_image(img)
    np.testing.assert_array_equal(ctl.current_mask(), seg.segment(points=[point]))


@pytest.mark.parametrize("remove", ["points", "image"])
def test_click_then_immediate_layer_deletion(viewer_and_widget, qtbot, monkeypatch, tiny_model, remove):
    monkeypatch.delenv("NAPARI_SAM_SYNC", raising=False)
    viewer, widget, img, truth = viewer_and_widget
    ctl = widget.controller
    qtbot.waitUntil(lambda: ctl.image_layer is not None, timeout=10000)
    widget.set_model(tiny_model, name="tiny-random", precision="fp32")
    ctl.add_point(_a_cell_pixel(truth))
    viewer.layers.remove(ctl.points_layer if remove == "points" else viewer.layers["cells"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    qtbot.wait(50)
    if remove == "points":  # the image stays usable: a new click is answered
        ctl.add_point(_a_cell_pixel(truth))
        assert ctl.current_mask() is not None
    else:
        assert ctl.image_layer is None and ctl.current_mask() is None
