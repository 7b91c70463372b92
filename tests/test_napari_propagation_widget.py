"""The "Propagate in 3D" dock widget on a real viewer (run under a virtual X display).

Most tests inject a stand-in predictor that answers with the ground-truth object
under the first prompt point, so the widget logic (seeding from the displayed
slice, ids, untouched labels, undo, cancel) is checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

N_Z, SHAPE = 6, (40, 48)


def _truth():
    """(6, 40, 48) int32: object 1 (a drifting disk) and object 2 (a shrinking disk) on every slice."""
    from skimage.draw import disk

    truth = np.zeros((N_Z, *SHAPE), np.int32)
    for z in range(N_Z):
        truth[z][disk((12 + z, 12), 7, shape=SHAPE)] = 1
        truth[z][disk((27, 34 - z), 9 - z // 2, shape=SHAPE)] = 2
    return truth


def _oracle(truth, calls=None, on_call=None):
    """A SlicePredictFn returning the true object under the prompt's first point (score 0.9)."""
    from napari_sam.engine.volumes.propagation import SlicePrediction

    def predict(z, prompt):
        if calls is not None:
            calls.append(z)
        if on_call is not None:
            on_call(len(calls))
        r, c = np.round(prompt.points[0]).astype(int)
        lid = truth[z, r, c]
        mask = (truth[z] == lid) if lid else np.zeros(SHAPE, bool)
        return SlicePrediction(mask, 0.9, None)

    return predict


def _setup(make_napari_viewer, monkeypatch, seed_ids=(1,), seed_z=2, **kwargs):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.widgets.propagation_widget import PropagationWidget

    truth = _truth()
    viewer = make_napari_viewer()
    img = ((truth > 0) * 1000 + 100).astype(np.uint16)
    viewer.add_image(img, name="stack")
    start = np.zeros(truth.shape, np.int32)
    for i in seed_ids:
        start[seed_z][truth[seed_z] == i] = i
    others = [z for z in range(N_Z) if z != seed_z]
    start[others, 0:3, 40:46] = 9  # an unrelated object on every other slice...
    start[N_Z - 1, 16:20, 10:14] = 9  # ...which also covers part of object 1 on the last slice
    labels = viewer.add_labels(start.copy(), name="objects")
    viewer.dims.set_current_step(0, seed_z)
    kwargs.setdefault("predict_fn", _oracle(truth))
    w = PropagationWidget(viewer, **kwargs)
    viewer.window.add_dock_widget(w)
    return viewer, w, labels, truth, start


def test_propagate_object_through_z_keeps_other_ids_and_undoes_in_one_step(make_napari_viewer, monkeypatch):
    viewer, w, labels, truth, start = _setup(make_napari_viewer, monkeypatch)
    assert w._labels.value is labels and w._image.value is viewer.layers["stack"]
    w._object.value = 1
    w.propagate_object()
    data = np.asarray(labels.data)
    np.testing.assert_array_equal(data == 1, (truth == 1) & (start != 9))  # all slices, from slice 2 only
    assert not (data == 2).any()  # not asked for
    np.testing.assert_array_equal(data == 9, start == 9)  # other objects untouched
    assert "propagated object 1 from slice 2" in w._status.value
    labels.undo()
    np.testing.assert_array_equal(np.asarray(labels.data), start)


def test_propagate_all_objects_on_this_slice(make_napari_viewer, monkeypatch):
    _, w, labels, truth, start = _setup(make_napari_viewer, monkeypatch, seed_ids=(1, 2), seed_z=3)
    w.propagate_all()
    data = np.asarray(labels.data)
    for i in (1, 2):
        np.testing.assert_array_equal(data == i, (truth == i) & (start != 9))
    np.testing.assert_array_equal(data == 9, start == 9)
    assert "2 objects" in w._status.value


def test_object_missing_on_displayed_slice_and_empty_slice_are_refused(make_napari_viewer, monkeypatch):
    viewer, w, labels, _, start = _setup(make_napari_viewer, monkeypatch)
    w._object.value = 2
    assert w.propagate_object() is None and "Label 2 has no pixels on slice 2" in w._status.value
    viewer.dims.set_current_step(0, 4)
    labels.data = np.where(start == 9, 0, start)
    assert w.propagate_all() is None and "No objects" in w._status.value


def test_wrong_shape_labels_are_refused_with_a_message(make_napari_viewer, monkeypatch):
    viewer, w, labels, _, _ = _setup(make_napari_viewer, monkeypatch)
    bad = viewer.add_labels(np.zeros((N_Z, 40, 50), np.int32), name="wrong")
    w._labels.value = bad
    assert w.propagate_object() is None
    assert "has shape (6, 40, 50)" in w._status.value and "needs (6, 40, 48)" in w._status.value
    assert w.segment_slice_automatically() is None and "wrong" in w._status.value
    assert not bad.data.any()


def test_cancel_keeps_the_partial_result(make_napari_viewer, monkeypatch):
    calls = []
    holder = {}
    truth = _truth()
    predict = _oracle(truth, calls, on_call=lambda n: n == 2 and holder["w"].cancel())
    _, w, labels, truth, start = _setup(make_napari_viewer, monkeypatch, predict_fn=predict)
    holder["w"] = w
    w.propagate_object()
    data = np.asarray(labels.data)
    assert calls == [3, 4]  # cancelled after the second slice
    for z in (2, 3, 4):
        np.testing.assert_array_equal(data[z] == 1, truth[z] == 1)
    for z in (0, 1, 5):
        assert not (data[z] == 1).any()
    np.testing.assert_array_equal(data == 9, start == 9)
    assert "cancelled" in w._status.value and w._cancel.enabled is False and w._through.enabled


def test_propagate_from_here_one_direction_after_a_correction(make_napari_viewer, monkeypatch):
    viewer, w, labels, truth, start = _setup(make_napari_viewer, monkeypatch)
    w.propagate_object()
    # the user corrects object 1 on slice 3 (here: erases its right half) and re-propagates upwards only
    corrected = np.asarray(labels.data).copy()
    corrected[3][:, 12:][corrected[3][:, 12:] == 1] = 0
    labels.data = corrected
    viewer.dims.set_current_step(0, 3)
    w._direction.value = "up (+z)"
    w._from_here.native.click()  # the button itself
    data = np.asarray(labels.data)
    np.testing.assert_array_equal(data[:3], corrected[:3])  # below the corrected slice: untouched
    np.testing.assert_array_equal(data[3], corrected[3])  # the correction itself is kept
    np.testing.assert_array_equal(data[4:] == 1, (truth[4:] == 1) & (start[4:] != 9))


def test_segment_this_slice_automatically_uses_new_ids_on_background_only(make_napari_viewer, monkeypatch):
    seen = []

    def fake_amg(image):
        seen.append(image.shape)
        out = np.zeros(SHAPE, np.int32)
        out[0:10, 38:48] = 1  # overlaps object 9 at rows 0..2, cols 40..45
        out[20:30, 5:15] = 5
        return out

    viewer, w, labels, _, start = _setup(make_napari_viewer, monkeypatch, segment_slice=fake_amg)
    viewer.dims.set_current_step(0, 5)
    w.segment_slice_automatically()
    data = np.asarray(labels.data)
    assert seen == [SHAPE]
    np.testing.assert_array_equal(data == 9, start == 9)  # the existing label keeps its pixels
    np.testing.assert_array_equal(data[:5], start[:5])  # other slices untouched
    assert set(np.unique(data[5])) == {0, 9, 10, 11}  # new ids after the largest one in use
    assert (data[5][0:10, 38:48] != 0).all() and (data[5][20:30, 5:15] == 11).all()
    assert "2 new objects" in w._status.value
    labels.undo()
    np.testing.assert_array_equal(np.asarray(labels.data), start)


def test_object_id_follows_the_selected_label(make_napari_viewer, monkeypatch):
    _, w, labels, _, _ = _setup(make_napari_viewer, monkeypatch)
    labels.selected_label = 7
    assert w._object.value == 7


def test_runs_in_a_worker_thread(make_napari_viewer, monkeypatch, qtbot):
    _, w, labels, truth, start = _setup(make_napari_viewer, monkeypatch)
    monkeypatch.delenv("NAPARI_SAM_SYNC")
    job = w.propagate_object()
    assert job is not None and job.worker is not None
    qtbot.waitUntil(lambda: not w.running, timeout=20000)
    np.testing.assert_array_equal(np.asarray(labels.data) == 1, (truth == 1) & (start != 9))


def test_tiny_model_end_to_end_and_controller_segmenter_is_reused(make_napari_viewer, monkeypatch, tiny_model):
    viewer, w, labels, _, start = _setup(make_napari_viewer, monkeypatch, predict_fn=None, model=tiny_model)
    w.propagate_object()
    data = np.asarray(labels.data)
    assert "error" not in w._status.value, w._status.value
    np.testing.assert_array_equal(data == 9, start == 9)
    np.testing.assert_array_equal(data[2] == 1, start[2] == 1)  # the seed slice stays as drawn
    assert set(np.unique(data)) <= {0, 1, 9}
    # a model loaded in napari-sam's main controller for this image is shared (same Segmenter)
    from napari_sam.adapters import get_controller

    ctl = get_controller(viewer)
    ctl.set_model(tiny_model, name="my_tiny.pt")
    ctl.set_image_layer(viewer.layers["stack"])
    w._refresh()
    assert "my_tiny.pt" in w._model.choices  # the main widget's model is offered
    w.session.model = None
    assert w.session.segmenter(viewer.layers["stack"], "my_tiny.pt")[0] is ctl.segmenter
    assert w.session.segmenter(viewer.layers["stack"], "my_tiny.pt")[1] is not None  # predictions take its lock


def test_module_import_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys, napari_sam.widgets.propagation_widget; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_model_automatic_slice(make_napari_viewer, monkeypatch, tiny_model):
    viewer, w, labels, _, start = _setup(make_napari_viewer, monkeypatch, predict_fn=None, model=tiny_model)
    w._points.value = 4  # 16 prompts: fast
    w.segment_slice_automatically()
    data = np.asarray(labels.data)
    assert "error" not in w._status.value, w._status.value
    np.testing.assert_array_equal(data[[0, 1, 3, 4, 5]], start[[0, 1, 3, 4, 5]])
    np.testing.assert_array_equal(data[2][start[2] > 0], start[2][start[2] > 0])
    new = set(np.unique(data[2])) - set(np.unique(start))
    assert all(i > start.max() for i in new)


def test_write_skips_voxels_edited_during_the_run_and_foreign_ids(make_napari_viewer, monkeypatch):
    _, w, labels, _, start = _setup(make_napari_viewer, monkeypatch)
    before = np.asarray(labels.data).copy()
    after = before.copy()
    after[4, 10:14, 10:14] = 1  # the run's result for id 1
    after[4, 30:32, 30:32] = 2  # an id the run was not asked for: must not be written
    labels.data_setitem((np.array([4]), np.array([10]), np.array([10])), 5)  # the user paints meanwhile
    index = np.nonzero(before != after)
    n = w.session.write_diff(labels, (index, before[index], after[index]), {1})
    data = np.asarray(labels.data)
    assert n == 15 and data[4, 10, 10] == 5 and (data[4, 10:14, 11:14] == 1).all()
    assert not (data == 2).any()


def test_cancel_in_a_worker_thread_keeps_the_partial_result(make_napari_viewer, monkeypatch, qtbot):
    import time

    calls = []
    truth = _truth()
    predict = _oracle(truth, calls, on_call=lambda n: time.sleep(0.3))
    _, w, labels, _, start = _setup(make_napari_viewer, monkeypatch, predict_fn=predict)
    monkeypatch.delenv("NAPARI_SAM_SYNC")
    w.propagate_object()
    qtbot.waitUntil(lambda: len(calls) >= 1, timeout=10000)
    w._cancel.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=10000)
    data = np.asarray(labels.data)
    assert "cancelled" in w._status.value and len(calls) < 5
    done = sorted({z for z in range(N_Z) if (data[z] == 1).any()})
    assert 2 in done and 3 in done and len(done) < N_Z  # seed + the slices finished before the cancel
    np.testing.assert_array_equal(data == 9, start == 9)


def test_automatic_slice_runs_at_the_precision_chosen_in_the_main_widget(make_napari_viewer, monkeypatch, tiny_model):
    """After the main widget's set_model(model, precision="bf16"), the propagation widget's
    "Segment this slice automatically" button reuses that segmenter and runs the encoder in bf16."""
    import torch

    import napari_sam.widgets.main_widget as mw
    from napari_sam.engine.models import device as device_mod

    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)  # bf16 is native on any CPU here
    monkeypatch.setattr(mw, "_default_model", lambda: None)
    viewer, w, labels, _, _ = _setup(make_napari_viewer, monkeypatch, predict_fn=None)
    _, main = viewer.window.add_plugin_dock_widget("napari-sam-lab", "Segment Anything")
    main.set_model(tiny_model, name="tiny-bf16", precision="bf16")
    assert main.controller.image_layer is viewer.layers["stack"]
    w._refresh()
    w._model.value = "tiny-bf16"
    seen = []

    def spy(_module, _inputs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)

    handle = tiny_model.image_encoder.register_forward_pre_hook(spy)
    try:
        w._points.value = 4
        w._auto.native.click()
    finally:
        handle.remove()
    assert "error" not in w._status.value, w._status.value
    assert "new objects" in w._status.value
    assert seen and set(seen) == {torch.bfloat16}, seen
def test_automatic_slice_on_the_main_widgets_model_holds_its_lock(make_napari_viewer, monkeypatch, tiny_model):
    """The automatic button shares the main widget's Segmenter: it must run under the controller's lock."""
    from napari_sam.adapters import get_controller
    from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator

    viewer, w, labels, _, _ = _setup(make_napari_viewer, monkeypatch, predict_fn=None)
    ctl = get_controller(viewer)
    ctl.set_model(tiny_model, name="my_tiny.pt")
    ctl.set_image_layer(viewer.layers["stack"])
    w._refresh()
    w._model.value = "my_tiny.pt"
    w._points.value = 2
    held = []
    original = SamAutomaticMaskGenerator.label_slice_iter

    def spy(self, *args, **kwargs):
        held.append(ctl._lock.locked())
        return (yield from original(self, *args, **kwargs))

    monkeypatch.setattr(SamAutomaticMaskGenerator, "label_slice_iter", spy)
    w.segment_slice_automatically()
    assert "error" not in w._status.value, w._status.value
    assert held == [True]
    assert not ctl._lock.locked()
