"""The propagation dock widget with a SAM 2.1 model: a time-lapse tracked with memory, and its Tracks layer."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def sam2_model():
    import torch
    from sam2_state import perturbed_sam2_state

    from napari_sam.model.sam2 import build_sam2

    torch.set_num_threads(1)
    return build_sam2("sam2.1_hiera_tiny", perturbed_sam2_state("sam2.1_hiera_tiny"), image_size=64)


def test_time_lapse_tracked_with_sam2_memory_and_tracks_layer(make_napari_viewer, monkeypatch, sam2_model):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from test_memory_propagation import drifting_cells

    from napari_sam.widgets.propagation_widget import PropagationWidget

    frames, truth = drifting_cells(6)
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="movie")
    start = np.zeros(truth.shape, np.int32)
    start[2][truth[2] > 0] = truth[2][truth[2] > 0]
    start[[0, 1, 3, 4, 5], 0:3, 0:3] = 9  # an unrelated object on every other frame
    labels = viewer.add_labels(start.copy(), name="cells")
    viewer.dims.set_current_step(0, 2)
    w = PropagationWidget(viewer, model=sam2_model)
    viewer.window.add_dock_widget(w)
    assert w.session.uses_memory(w._model.value)

    w._all.changed.emit(True)  # "Propagate all objects on this slice"
    data = np.asarray(labels.data)
    first = data.copy()
    assert "with SAM 2 memory" in w._status.value, w._status.value
    np.testing.assert_array_equal(data == 9, start == 9)  # other objects untouched
    np.testing.assert_array_equal(data[2], start[2])  # the drawn frame as drawn
    for oid in (1, 2):  # each object followed through time under its own id
        assert sum((data[t] == oid).any() for t in range(6)) >= 4
    assert set(np.unique(data)) <= {0, 1, 2, 9}

    w._tracks.changed.emit(True)  # "Add tracks layer"
    tracks = viewer.layers["cells tracks"]
    ids = set(tracks.data[:, 0].astype(int))
    assert ids == {1, 2, 9}
    one = tracks.data[tracks.data[:, 0] == 1]
    assert np.array_equal(one[:, 1], np.unique(one[:, 1]))  # one point per frame, in time order
    r, c = one[one[:, 1] == 2][0, 2:]
    rr, cc = np.nonzero(data[2] == 1)
    assert abs(r - rr.mean()) < 1e-6 and abs(c - cc.mean()) < 1e-6

    labels.undo()  # the whole run is one undo step
    np.testing.assert_array_equal(np.asarray(labels.data), start)

    predictor = w.session.video_predictor(w._model.value)  # kept by the session across runs
    assert predictor.encoded_frames == 6
    w._all.changed.emit(True)  # the same run again: every frame's features come from the store
    assert predictor.encoded_frames == 6
    np.testing.assert_array_equal(np.asarray(labels.data), first)


def test_tracks_from_labels_rows():
    from napari_sam.adapters.tracks import tracks_from_labels

    lab = np.zeros((3, 10, 10), np.int32)
    lab[0, 2:4, 2:4] = 5
    lab[2, 6:8, 6:8] = 5
    lab[1, 0, 0] = 3
    data = tracks_from_labels(lab)
    np.testing.assert_allclose(data, [[3, 1, 0, 0], [5, 0, 2.5, 2.5], [5, 2, 6.5, 6.5]])


def test_automatic_slice_with_a_sam2_model_is_refused_clearly(make_napari_viewer, monkeypatch, sam2_model):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.widgets.propagation_widget import PropagationWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32), np.uint8), name="movie")
    labels = viewer.add_labels(np.zeros((3, 32, 32), np.int32), name="cells")
    w = PropagationWidget(viewer, model=sam2_model)
    w._auto.changed.emit(True)
    assert "needs a SAM 1 model" in w._status.value
    assert not np.asarray(labels.data).any()
