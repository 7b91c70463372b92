"""The "Fine-tune" dock widget on a real viewer (run under a virtual X display)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gui


def _viewer_with_pair(make_napari_viewer, cells_image):
    image, labels = cells_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.astype(np.int32), name="truth")
    return viewer


def _widget(viewer, checkpoint, out, epochs=1):
    from napari_sam.widgets.model_picker import FROM_FILE
    from napari_sam.widgets.training_widget import TrainingWidget

    w = TrainingWidget(viewer)
    viewer.window.add_dock_widget(w)
    w._image.value = viewer.layers["cells"]
    w._labels.value = viewer.layers["truth"]
    w._model.value = FROM_FILE
    w._model_file.value = checkpoint
    w._decoder_only.value = True
    w._epochs.value = epochs
    w._interactions.value = 2
    w._output.value = str(out)
    return w


def test_decoder_only_training_writes_a_loadable_checkpoint(make_napari_viewer, monkeypatch, cells_image,
                                                            tiny_checkpoint, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.model import build_sam

    viewer = _viewer_with_pair(make_napari_viewer, cells_image)
    out = tmp_path / "tuned.pt"
    w = _widget(viewer, tiny_checkpoint, out, epochs=2)
    w.run()
    assert w.last_result is not None and w.last_result.completed, w._status.value
    assert out.is_file() and "saved" in w._status.value
    before = torch.load(tiny_checkpoint, weights_only=True)
    after = build_sam("tiny", checkpoint=str(out)).state_dict()
    enc = [k for k in before if k.startswith("image_encoder.")]
    dec = [k for k in before if k.startswith("mask_decoder.") and before[k].is_floating_point()]
    assert all(torch.equal(before[k], after[k]) for k in enc)  # frozen encoder
    assert any(not torch.equal(before[k], after[k]) for k in dec)  # the decoder learnt something
    assert w._run.enabled and not w._cancel.enabled


def test_bad_inputs_are_reported_and_nothing_is_overwritten(make_napari_viewer, monkeypatch, cells_image,
                                                            tiny_checkpoint, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    viewer = _viewer_with_pair(make_napari_viewer, cells_image)
    out = tmp_path / "existing.pt"
    out.write_bytes(b"user data")
    w = _widget(viewer, tiny_checkpoint, out)
    assert w.run() is None
    assert "exists" in w._status.value and out.read_bytes() == b"user data"

    w._output.value = str(tmp_path / "new.pt")
    viewer.layers["truth"].data = np.zeros_like(viewer.layers["truth"].data)
    assert w.run() is None
    assert "no object" in w._status.value.lower() and not (tmp_path / "new.pt").exists()

    w._labels.value = None
    assert w.run() is None and "labels" in w._status.value


def test_stop_in_a_real_worker_saves_the_last_checkpoint(make_napari_viewer, monkeypatch, qtbot, cells_image,
                                                          tiny_checkpoint, tmp_path):
    monkeypatch.delenv("NAPARI_SAM_SYNC", raising=False)
    from napari_sam.training.trainer import state_path

    viewer = _viewer_with_pair(make_napari_viewer, cells_image)
    out = tmp_path / "stopped.pt"
    w = _widget(viewer, tiny_checkpoint, out, epochs=10_000)
    steps = []
    job = w.run()
    assert job is not None and w.running
    job.worker.yielded.connect(lambda p: steps.append(p.done))
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=120_000)
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.last_result is None  # stopped, not completed
    state = torch.load(state_path(out), weights_only=True)
    assert 1 <= state["step"] < state["total_steps"]
    assert out.is_file() and w._run.enabled
