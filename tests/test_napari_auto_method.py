"""The method choice and the bundled-model note in the batch and propagation dock widgets (virtual X display)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from reference_models import two_disc_stack

pytestmark = pytest.mark.gui


def _with_decoder(model):
    import torch

    from napari_sam.engine.models.instance_decoders import attach, embed_dim_of
    from napari_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig

    model = copy.deepcopy(model)
    torch.manual_seed(0)
    attach(model, InstanceDecoder(InstanceDecoderConfig(embed_dim=embed_dim_of(model), initial_features=8)))
    return model


def test_batch_widget_method_choice_reaches_the_run(make_napari_viewer, tmp_path, monkeypatch, otsu_model):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.engine.models.auto_defaults import TINY_NOTE
    from napari_sam.widgets.batch_widget import BatchWidget

    viewer = make_napari_viewer()
    img, _ = two_disc_stack(2)
    viewer.add_image(img, name="stack")
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w)
    w._model.value = "tiny"
    assert not w._note.native.isHidden() and w._note.value == TINY_NOTE  # what it is, what to choose instead
    w._model.value = "vit_b"
    assert w._note.native.isHidden()
    w._method.value = "ais"  # vit_b has no decoder: a clear status, nothing written
    w._output.value = tmp_path / "a.zarr"
    w.run()
    assert "no instance decoder" in w._status.value and "vit_b_lm" in w._status.value
    assert not (tmp_path / "a.zarr").exists()
    w._method.value = "amg"
    w._points.value = 8
    w.run()
    s = otsu_model[-1].settings
    assert (s.method, s.points_per_side, s.pred_iou_thresh) == ("amg", 8, 0.88)
    assert "objects in 2 slices" in w._status.value
    w._model.value = "vit_b_lm"  # auto: its decoder, with its own thresholds (nothing downloaded: build is replaced)
    w._method.value = "auto"
    w._output.value = tmp_path / "b.zarr"
    w.run()
    s = otsu_model[-1].settings
    assert (s.method, s.center_distance_threshold) == ("ais", 0.4)


def test_propagation_widget_auto_method_uses_the_decoder(make_napari_viewer, monkeypatch, tiny_model):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.engine.automatic import amg, instance_decoder
    from napari_sam.widgets.propagation_widget import PropagationWidget

    viewer = make_napari_viewer()
    img, _ = two_disc_stack(3)
    viewer.add_image(img, name="stack")
    labels = viewer.add_labels(np.zeros(img.shape, np.int32), name="objects")
    viewer.dims.set_current_step(0, 1)
    calls = []
    real = instance_decoder.segment_with_decoder_steps

    def spy(*a, **k):
        calls.append("ais")
        return (yield from real(*a, **k))

    monkeypatch.setattr(instance_decoder, "segment_with_decoder_steps", spy)

    def no_grid(*a, **k):
        raise AssertionError("grid prompts were used")

    monkeypatch.setattr(amg.SamAutomaticMaskGenerator, "label_slice_iter", no_grid)
    from sam2_state import EncoderCalls

    model = _with_decoder(tiny_model)
    encoder = EncoderCalls(model)
    w = PropagationWidget(viewer, model=model)
    viewer.window.add_dock_widget(w)
    assert w._method.value == "auto"
    w.segment_slice_automatically()
    assert calls == ["ais"] and "error" not in w._status.value, w._status.value
    assert labels.data[[0, 2]].max() == 0  # only the displayed slice is written
    w.segment_slice_automatically()  # again (e.g. after clearing some objects): the slice's embedding is reused
    assert calls == ["ais", "ais"] and encoder.n == 1, (calls, encoder.n)
    encoder.close()

    w2 = PropagationWidget(viewer, model=tiny_model)  # no decoder: 'ais' is refused with the models that have one
    w2._method.value = "ais"
    w2.segment_slice_automatically()
    assert "no instance decoder" in w2._status.value and "vit_b_lm" in w2._status.value
