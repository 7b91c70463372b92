"""Widget rough edges (issue 14, case 17) on a real viewer: colours, statuses, layer choices, defaults, titles.

Run under a virtual display (pytest-xvfb starts one). Work runs inline (NAPARI_SAM_SYNC=1).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.samples import synthetic_cells, synthetic_stack  # noqa: E402

PLUGIN = "napari-sam-lab"


@pytest.fixture(scope="module")
def gui_model():
    """A random-weight SAM of the tiny family with a one-block narrow encoder (fast)."""
    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.config import TINY

    torch.manual_seed(0)
    model = build_sam(TINY.with_encoder(depth=1, embed_dim=64, num_heads=2, global_attn_indexes=(0,)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture()
def sync(monkeypatch):
    import napari_sam.widgets.main_widget as mw

    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    monkeypatch.setattr(mw, "_default_model", lambda: None)  # the test injects its model


@pytest.fixture()
def main_viewer(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    img, truth = synthetic_cells((128, 160), n_cells=6)
    viewer.add_image(img, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    widget.set_model(gui_model, name="tiny-random")
    return viewer, widget, truth


def _click_object(ctl, truth, label):
    ys, xs = np.nonzero(truth == label)
    ctl.add_point((float(np.median(ys)), float(np.median(xs))))


def test_preview_colour_differs_from_committed_labels(main_viewer):
    viewer, widget, truth = main_viewer
    ctl = widget.controller
    _click_object(ctl, truth, 1)
    widget._accept.clicked.emit()
    _click_object(ctl, truth, 2)
    preview, target = viewer.layers["SAM preview"], ctl.target_layer
    shown = int(np.asarray(preview.data).max())
    assert shown > 0
    preview_rgb = np.asarray(preview.get_color(shown))[:3]
    for label_id in range(1, 21):  # the first committed ids, as napari colours them in the target layer
        committed = np.asarray(target.get_color(label_id))[:3]
        assert np.abs(preview_rgb - committed).max() > 0.2, (label_id, preview_rgb, committed)


def test_status_after_undo_and_redo(main_viewer):
    viewer, widget, truth = main_viewer
    ctl = widget.controller
    _click_object(ctl, truth, 1)
    widget._accept.clicked.emit()
    _click_object(ctl, truth, 2)
    widget._accept.clicked.emit()
    assert widget._status.value == "accepted label 2"
    widget._undo.clicked.emit()
    assert widget._status.value == "undid label 2"
    widget._redo.clicked.emit()
    assert widget._status.value == "redid label 2"


def test_batch_status_follows_the_selected_image(make_napari_viewer, sync):
    viewer = make_napari_viewer()
    _, batch = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment stack")
    assert batch._image.value is None and batch._status.value == "pick an image"
    viewer.add_image(synthetic_cells((64, 64), n_cells=2)[0], name="cells")
    assert batch._image.value is viewer.layers["cells"]
    assert "pick an image" not in batch._status.value and "Segment stack" in batch._status.value
    viewer.layers.remove("cells")
    assert batch._status.value == "pick an image"


def test_propagation_never_picks_the_sam_preview(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    img, truth = synthetic_stack((4, 64, 64), n_cells=2)
    viewer.add_image(img, name="stack")
    viewer.add_labels(np.zeros_like(truth), name="mine")
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    main.set_model(gui_model, name="tiny-random")
    viewer.dims.set_current_step(0, 2)
    ys, xs = np.nonzero(truth[2])
    main.controller.add_point((float(ys[0]), float(xs[0])))
    assert "SAM preview" in viewer.layers  # the newest Labels layer is napari-sam's preview
    _, prop = viewer.window.add_plugin_dock_widget(PLUGIN, "Propagate in 3D")
    names = [layer.name for layer in prop._labels.choices if layer is not None]
    assert "SAM preview" not in names
    assert prop._labels.value is not None and prop._labels.value.name != "SAM preview"


def test_fine_tune_defaults_to_the_bundled_model(make_napari_viewer):
    from napari_sam.engine.models.zoo import default_model_name, get_entry

    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert train._model.value == default_model_name() == "tiny"
    assert get_entry(train._model.value).available  # ships in the package: no download


def test_dock_titles_and_labels_are_not_clipped(make_napari_viewer):
    from npe2 import PluginManager
    from qtpy.QtWidgets import QApplication, QLabel

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    clipped = []
    for contrib in PluginManager.instance().get_manifest(PLUGIN).contributions.widgets:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, contrib.display_name)
        QApplication.processEvents()
        for label in dock.titleBarWidget().findChildren(QLabel) + widget.native.findChildren(QLabel):
            text = label.text()
            if label.isVisible() and text and not label.wordWrap() and "\n" not in text:
                if label.fontMetrics().horizontalAdvance(text) > label.width():
                    clipped.append((contrib.display_name, text, label.width()))
    assert clipped == []
