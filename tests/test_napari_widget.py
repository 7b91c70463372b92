"""The napari-sam dock widget and its controller in a real (headless) napari viewer.

Run under a virtual display: ``xvfb-run -a .venv/bin/python -m pytest tests/test_napari_widget.py``.
Work runs inline (NAPARI_SAM_SYNC=1) except in the tests that check the real worker.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.errors import InvalidImageError, InvalidPromptError  # noqa: E402
from napari_sam.samples import synthetic_cells, synthetic_stack  # noqa: E402

PLUGIN, WIDGET = "napari-sam-lab", "Segment Anything"


@pytest.fixture(scope="module")
def gui_model():
    """A random-weight SAM of the 'tiny' family with a one-block, narrow encoder (~0.2 s per embedding).

    The widget logic does not depend on the encoder's size; the decoder and prompt encoder are tiny's.
    """
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
def no_autoload(monkeypatch):
    """Keep the widget from loading the zoo default by itself (tests inject the tiny random model)."""
    import napari_sam.widgets.main_widget as mw

    monkeypatch.setattr(mw, "_default_model", lambda: None)


@pytest.fixture()
def sync(monkeypatch, no_autoload):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


@pytest.fixture()
def cells_viewer(make_napari_viewer, sync, gui_model):
    """A viewer with a 2D uint16 image, the widget opened through the manifest and the tiny model injected."""
    viewer = make_napari_viewer()
    img, truth = synthetic_cells((128, 160), n_cells=6)
    viewer.add_image(img, name="cells")
    widget = open_widget(viewer)
    widget.set_model(gui_model, name="tiny-random")
    return viewer, widget, widget.controller, truth


def test_widget_picks_image_and_embeds(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    assert ctl.image_layer is viewer.layers["cells"]
    assert ctl.segmenter.has_embedding(None)  # embedded by itself once image and model were there
    assert "tiny-random" in widget._timing.value and "embed" in widget._timing.value
    assert str(ctl.points_layer.mode) == "add"
    assert viewer.layers.selection.active is ctl.points_layer


def test_click_shows_preview_and_cycles_candidates(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    ctl.add_point((40, 50))
    pred = ctl.prediction
    assert pred is not None and pred.masks.shape == (3, 128, 160)
    preview = viewer.layers["SAM preview"]
    np.testing.assert_array_equal(preview.data > 0, pred.masks[pred.best])
    assert ctl.candidate == pred.best
    widget._next.clicked.emit()
    assert ctl.candidate == (pred.best + 1) % 3
    np.testing.assert_array_equal(preview.data > 0, pred.masks[ctl.candidate])
    # a second click re-runs only the decoder: one candidate for an unambiguous prompt set
    ctl.add_point((45, 55), positive=False)
    assert ctl.prediction.masks.shape[0] == 1
    np.testing.assert_array_equal(ctl.prompts().labels, [1, 0])


def test_box_prompt_from_shapes_layer(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    widget._box.clicked.emit()
    assert str(ctl.boxes_layer.mode) == "add_rectangle"
    ctl.boxes_layer.add_rectangles(np.array([[10, 20], [60, 80]]))
    np.testing.assert_allclose(ctl.prompts().box, [10, 20, 60, 80])
    assert ctl.prediction is not None
    np.testing.assert_array_equal(viewer.layers["SAM preview"].data > 0, ctl.current_mask())


def _object_mask(ctl):
    """Force a known preview mask (the model is random; the commit logic is what is tested)."""
    mask = np.zeros(ctl.segmenter.spatial_shape, bool)
    mask[20:50, 30:70] = True
    return mask


class _FixedPrediction:
    def __init__(self, mask):
        self.masks = mask[None]
        self.scores = np.ones(1)
        self.best = 0


def _preview(ctl, mask):
    ctl.prediction = _FixedPrediction(mask)
    ctl.candidate = 0


def test_accept_uses_new_ids_keeps_existing_labels_and_undo_redo(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    existing = np.zeros((128, 160), np.int32)
    existing[25:35, 35:45] = 7
    target = viewer.add_labels(existing.copy(), name="mine")
    widget._target.reset_choices()
    widget._target.value = target
    assert ctl.target_layer is target
    ctl.add_point((40, 50))
    mask = _object_mask(ctl)
    _preview(ctl, mask)
    widget._accept.clicked.emit()
    assert (target.data[25:35, 35:45] == 7).all()  # never overwritten by default
    assert ((target.data == 8) == (mask & (existing == 0))).all()
    assert len(ctl.points_layer.data) == 0 and ctl.prediction is None  # prompts cleared
    mask2 = np.zeros_like(mask)
    mask2[60:90, 100:140] = True
    _preview(ctl, mask2)
    assert ctl.accept() == 9
    after = target.data.copy()
    assert ctl.undo() == 9
    assert not (target.data == 9).any() and (target.data == 8).any()
    assert ctl.undo() == 8
    np.testing.assert_array_equal(target.data, existing)
    assert ctl.undo() is None
    ctl.redo()
    ctl.redo()
    np.testing.assert_array_equal(target.data, after)


def test_overwrite_option(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    existing = np.zeros((128, 160), np.int32)
    existing[25:35, 35:45] = 3
    target = viewer.add_labels(existing, name="mine")
    widget._target.reset_choices()
    widget._target.value = target
    widget._overwrite.value = True
    _preview(ctl, _object_mask(ctl))
    lid = ctl.accept()
    assert lid == 4 and (target.data[25:35, 35:45] == 4).all()


def test_new_target_layer_is_created_with_image_geometry(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    img, _ = synthetic_cells((96, 112), n_cells=4)
    viewer.add_image(img, name="cells", scale=(0.5, 2.0), translate=(10.0, -4.0))
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    _preview(ctl, np.pad(np.ones((10, 10), bool), ((40, 46), (50, 52))))
    assert ctl.accept() == 1
    target = viewer.layers["SAM labels"]
    assert target.data.shape == (96, 112)
    np.testing.assert_allclose(target.scale, (0.5, 2.0))
    np.testing.assert_allclose(target.translate, (10.0, -4.0))


def test_world_coordinates_with_scale_and_translate(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    img, _ = synthetic_cells((96, 112), n_cells=4)
    image = viewer.add_image(img, name="cells", scale=(0.5, 2.0), translate=(10.0, -4.0))
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    # a click at world position of pixel (30, 40): world = translate + scale * data
    world = np.array([10.0 + 0.5 * 30, -4.0 + 2.0 * 40])
    ctl.points_layer.add(ctl.points_layer.world_to_data(world)[None])
    np.testing.assert_allclose(ctl.prompts().points, [[30.0, 40.0]], atol=1e-9)
    np.testing.assert_allclose(image.world_to_data(world), [30, 40])
    assert ctl.prediction is not None and ctl.prediction.masks.shape[-2:] == (96, 112)


def test_3d_layer_prompts_stay_on_their_slice(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    stack, _ = synthetic_stack((5, 64, 72), n_cells=3)
    viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    viewer.dims.set_current_step(0, 3)
    assert ctl.current_key() == (3,)
    assert ctl.segmenter.has_embedding((3,))  # the displayed slice is embedded on its own
    ctl.add_point((30, 30))
    assert ctl.points_layer.data[0, 0] == pytest.approx(3.0)  # the click carries its z
    assert ctl.prediction is not None
    assert viewer.layers["SAM preview"].data[3].any() and not viewer.layers["SAM preview"].data[[0, 1, 2, 4]].any()
    viewer.dims.set_current_step(0, 1)
    assert ctl.current_key() == (1,) and ctl.segmenter.has_embedding((1,))
    assert len(ctl.prompts().points) == 0  # the slice-3 click does not leak into slice 1
    assert not viewer.layers["SAM preview"].data.any()
    viewer.dims.set_current_step(0, 3)
    assert len(ctl.prompts().points) == 1
    lid = ctl.accept()
    target = viewer.layers["SAM labels"]
    assert target.data.shape == (5, 64, 72)
    assert (target.data[3] == lid).any() and not target.data[[0, 1, 2, 4]].any()


def test_4d_layer_slice_key(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((2, 3, 40, 48)).astype(np.float32)
    viewer.add_image(data, name="t-z")
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    assert ctl.current_key() == (1, 2)
    ctl.add_point((20, 20))
    assert ctl.prediction is not None
    assert ctl.segmenter.has_embedding((1, 2))


@pytest.mark.parametrize("kind", ["rgb_uint8", "float", "multiscale"])
def test_rgb_float_and_multiscale_images(make_napari_viewer, sync, gui_model, kind):
    viewer = make_napari_viewer()
    img, _ = synthetic_cells((80, 96), n_cells=3)
    if kind == "rgb_uint8":
        g = (img / img.max() * 255).astype(np.uint8)
        data = np.stack([g, g // 2, g], axis=-1)
        layer = viewer.add_image(data, name="img")
    elif kind == "float":
        layer = viewer.add_image(img.astype(np.float32) / 1000.0, name="img")
    else:
        layer = viewer.add_image([img, img[::2, ::2]], name="img", multiscale=True)
    assert layer.rgb == (kind == "rgb_uint8") and layer.multiscale == (kind == "multiscale")
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    assert ctl.segmenter.spatial_shape == (80, 96)
    ctl.add_point((40, 40))
    _preview(ctl, np.pad(np.ones((8, 8), bool), ((30, 42), (30, 58))))
    ctl.accept()
    assert viewer.layers["SAM labels"].data.shape == (80, 96)


def test_edit_label_recommits_under_same_id(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    mask = _object_mask(ctl)
    _preview(ctl, mask)
    lid = ctl.accept()
    target = ctl.target_layer
    widget._edit_id.value = lid
    widget._edit.clicked.emit()
    assert ctl.editing == lid
    np.testing.assert_array_equal(viewer.layers["SAM preview"].data > 0, mask)
    ctl.add_point((30, 40))  # a correction click: the mask prompt goes with it
    assert ctl.prediction is not None and ctl.prediction.masks.shape[0] == 1
    smaller = np.zeros_like(mask)
    smaller[20:40, 30:50] = True
    _preview(ctl, smaller)
    assert ctl.accept() == lid
    np.testing.assert_array_equal(target.data == lid, smaller)
    assert set(np.unique(target.data)) == {0, lid}
    ctl.undo()
    np.testing.assert_array_equal(target.data == lid, mask)


def test_mask_to_logits_roundtrip(gui_model):
    from napari_sam.adapters.mask_prompt import mask_to_logits
    from napari_sam.engine.prediction.segmenter import Segmenter

    mask = np.zeros((100, 150), bool)
    mask[20:60, 30:90] = True
    grid = gui_model.prompt_encoder.mask_input_size
    assert gui_model.image_encoder.img_size == 256 and grid == (128, 128)
    logits = mask_to_logits(mask, 256, grid)
    assert logits.shape == (1, 128, 128) and logits.dtype == np.float32
    # the resized image (171 x 256 px of the 256 x 256 input) is the top-left 85 x 128 of the logit grid:
    # the mask (rows 20-60, cols 30-90 of 100 x 150) covers rows ~17-51, cols ~26-77 there
    assert logits[0, 34, 51] > 0 and logits[0, 5, 5] < 0 and logits[0, 100, 50] < 0
    seg = Segmenter(gui_model)
    seg.set_image(np.zeros((100, 150), np.uint8))
    assert seg.predict(points=[(40, 60)], mask_input=logits, multimask=False).masks.shape == (1, 100, 150)


def test_keybindings_are_bound_on_plugin_layers_only(cells_viewer):
    from app_model.types import KeyBinding

    viewer, widget, ctl, _ = cells_viewer
    kb = KeyBinding.from_str("Enter")
    assert kb in ctl.points_layer.keymap and kb in ctl.boxes_layer.keymap
    assert kb not in viewer.layers["cells"].keymap
    ctl.add_point((40, 50))
    _preview(ctl, _object_mask(ctl))
    ctl.points_layer.keymap[kb](ctl.points_layer)
    assert (viewer.layers["SAM labels"].data == 1).any()
    ctl.points_layer.keymap[KeyBinding.from_str("Control-Z")](ctl.points_layer)
    assert not viewer.layers["SAM labels"].data.any()
    ctl.points_layer.keymap[KeyBinding.from_str("N")](ctl.points_layer)
    assert ctl.negative_mode


def test_negative_clicks_by_modifier_and_toggle(cells_viewer):
    from napari_sam.adapters.prompt_layers import POINT_COLORS, POSITIVE

    viewer, widget, ctl, _ = cells_viewer
    pts = ctl.points_layer
    cb = pts.mouse_drag_callbacks[0]

    class Ev:
        modifiers = ("Alt",)

    cb(pts, Ev())
    pts.add(np.array([[40.0, 50.0]]))
    Ev.modifiers = ()
    cb(pts, Ev())
    pts.add(np.array([[60.0, 70.0]]))
    assert pts.features[POSITIVE].tolist() == [False, True]
    from napari.utils.colormaps.standardize_color import transform_color

    np.testing.assert_allclose(pts.face_color[0], transform_color(POINT_COLORS[False])[0])
    np.testing.assert_allclose(pts.face_color[1], transform_color(POINT_COLORS[True])[0])
    widget._negative.value = True
    cb(pts, Ev())
    assert pts.feature_defaults[POSITIVE].iloc[0] == False  # noqa: E712
    np.testing.assert_array_equal(ctl.prompts().labels, [0, 1])


# ---- bad input -----------------------------------------------------------------------------------
def test_no_image_layer(make_napari_viewer, sync, gui_model):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    widget._accept.clicked.emit()  # must not raise
    assert "Nothing to accept" in widget._status.value or "image" in widget._status.value
    with pytest.raises(Exception, match="image"):
        widget.controller.add_point((1, 1))


def test_click_outside_image_is_reported_not_raised(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    ctl.points_layer.add(np.array([[500.0, 500.0]]))
    assert ctl.prediction is None
    assert "outside" in widget._status.value
    assert not viewer.layers["SAM preview"].data.any() if "SAM preview" in viewer.layers else True
    with pytest.raises(InvalidPromptError):
        ctl.segment()


def test_wrong_shape_target_is_refused_and_untouched(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    wrong = viewer.add_labels(np.zeros((50, 50), np.int32), name="wrong")
    widget._target.reset_choices()
    widget._target.value = wrong
    _preview(ctl, _object_mask(ctl))
    widget._accept.clicked.emit()
    assert "shape" in widget._status.value
    assert not wrong.data.any()
    with pytest.raises(InvalidImageError, match="shape"):
        ctl.accept()


def test_failed_commit_leaves_target_unchanged(cells_viewer, monkeypatch):
    viewer, widget, ctl, _ = cells_viewer
    _preview(ctl, _object_mask(ctl))
    ctl.accept()
    target = ctl.target_layer
    before = target.data.copy()
    bad = np.zeros((10, 10), bool)  # wrong shape: the commit must fail before writing
    _preview(ctl, bad)
    with pytest.raises(InvalidPromptError):
        ctl.accept()
    np.testing.assert_array_equal(target.data, before)


def test_replacing_image_data_re_embeds(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    ctl.add_point((40, 50))
    assert ctl.prediction is not None
    viewer.layers["cells"].data = np.zeros((128, 160), np.uint16)
    assert ctl.prediction is None and ctl.segmenter.has_embedding(None)
    assert not np.asarray(ctl.segmenter.image).any()  # the new data were embedded (inline)
    viewer.layers["cells"].data = np.ones((64, 72), np.uint16)  # another shape: a fitting preview is made
    ctl.add_point((30, 30))
    assert viewer.layers["SAM preview"].data.shape == (64, 72)


def test_committed_labels_survive_layer_deletion_and_image_switch(cells_viewer):
    viewer, widget, ctl, _ = cells_viewer
    _preview(ctl, _object_mask(ctl))
    lid = ctl.accept()
    target = ctl.target_layer
    saved = target.data.copy()
    viewer.layers.remove(ctl.points_layer)
    viewer.layers.remove(ctl.boxes_layer)
    assert ctl.points_layer is None
    ctl.add_point((40, 50))  # prompt layers are re-created
    assert ctl.points_layer in viewer.layers
    other = viewer.add_image(np.zeros((64, 64), np.uint16), name="other")
    widget._image.value = other
    assert ctl.image_layer is other
    np.testing.assert_array_equal(target.data, saved)
    assert (target.data == lid).any()


def test_failed_model_load_reports_without_freezing(make_napari_viewer, sync, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    widget = open_widget(viewer)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    from napari.utils.notifications import notification_manager

    widget._model.value = "from file..."
    assert not widget._model_file.native.isHidden()  # the file chooser appears for "from file..."
    widget._model_file.value = bad
    before = len(notification_manager.records)
    widget._load.clicked.emit()
    assert "Could not load model" in widget._status.value
    assert any("Could not load model" in str(n.message) for n in notification_manager.records[before:])
    assert widget.controller.segmenter is None and not widget.busy


def test_real_worker_embeds_and_image_removal_while_embedding(make_napari_viewer, qtbot, no_autoload, gui_model,
                                                              monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_SYNC", raising=False)
    viewer = make_napari_viewer()
    img, _ = synthetic_cells((96, 96), n_cells=3)
    viewer.add_image(img, name="cells")
    widget = open_widget(viewer)
    ctl = widget.controller
    qtbot.waitUntil(lambda: ctl.image_layer is not None, timeout=10000)  # picked once the widget is shown
    widget.set_model(gui_model)
    qtbot.waitUntil(lambda: not widget.busy and ctl.segmenter.has_embedding(None), timeout=30000)
    ctl.add_point((40, 40))
    assert ctl.prediction is not None
    # a second image: remove it while its embedding runs in the worker
    second = viewer.add_image(img[::-1].copy(), name="second")
    widget._image.value = second
    assert widget.busy
    viewer.layers.remove(second)
    assert ctl.image_layer is not second  # the widget falls back to the remaining image
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert ctl.image_layer is viewer.layers["cells"]  # the late result was ignored, nothing raised
    assert ctl.segmenter.spatial_shape == (96, 96)


def test_sample_data_through_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_cells")
    viewer.open_sample(PLUGIN, "skimage_cell")
    viewer.open_sample(PLUGIN, "synthetic_stack")
    assert viewer.layers["synthetic cells"].data.ndim == 2
    assert viewer.layers["synthetic stack"].data.ndim == 3
    assert viewer.layers["cell (scikit-image)"].data.shape == (660, 550)


@pytest.mark.slow
def test_tiled_slice_click_and_edit(make_napari_viewer, sync, gui_model):
    """An image larger than the model input is embedded in tiles; clicks and edits still work."""
    viewer = make_napari_viewer()
    img, truth = synthetic_cells((300, 420), n_cells=8)
    viewer.add_image(img, name="big")
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    assert len(ctl.segmenter.tile_grid) > 1 and ctl.segmenter.has_embedding(None)
    ctl.add_point((150, 200))
    assert ctl.prediction is not None and ctl.prediction.masks.shape[-2:] == (300, 420)
    mask = np.zeros((300, 420), bool)
    mask[40:80, 60:100] = True
    _preview(ctl, mask)
    lid = ctl.accept()
    ctl.edit_label(lid)
    assert ctl._edit[3] is not None and ctl._edit[4] is not None  # mask prompt in one tile's frame
    ctl.add_point((60, 80))
    assert ctl.prediction is not None
    assert ctl.accept() == lid
