"""The dock widgets' "channels" list: the encoder sees the mean of the chosen same-shaped layers, exactly as
``set_image(..., axes="cyx", channel=[...])`` in a script; napari layers are never refused as ambiguous."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_napari_widget import gui_model, no_autoload, open_widget, sync  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.gui


def _recording(predictor) -> list:
    """Record the (B, 3, h, w) tensors the encoder is given."""
    seen, encode = [], predictor.encode
    predictor.encode = lambda x: (seen.append(x.detach().clone()), encode(x))[1]
    return seen


def _channels(cells_image):
    img, _ = cells_image
    noise = np.random.default_rng(5).integers(0, 4000, img.shape).astype(np.uint16)
    return img, noise


def test_main_widget_channel_composite_is_what_the_encoder_sees(make_napari_viewer, sync, gui_model,  # noqa: F811
                                                                cells_image):
    from napari_sam import Segmenter

    img, noise = _channels(cells_image)
    viewer = make_napari_viewer()
    c0 = viewer.add_image(img, name="c0")
    c1 = viewer.add_image(noise, name="c1")
    viewer.add_image(img[:100], name="other shape")
    viewer.add_image(np.zeros((*img.shape, 3), np.uint8), name="rgb", rgb=True)
    widget = open_widget(viewer)
    widget._image.value = c0
    widget.set_model(gui_model, name="tiny-random")
    picker = widget._channels.select
    assert {layer.name for layer in picker.choices} == {"c0", "c1"}  # same shape, grayscale only
    assert picker.value == [c0]  # default: the image alone
    ctl = widget.controller
    widget_seen = _recording(ctl.segmenter.predictor)
    picker.value = [c0, c1]  # through the public control
    assert ctl.channel_layers == [c0, c1]
    assert widget_seen, "the composite was not embedded"
    got = widget_seen[-1]

    # the same setting in a script: the engine's channel choice over a (C, Y, X) stack
    api = Segmenter(model=gui_model)
    want_seen = _recording(api.predictor)
    api.set_image(np.stack([img, noise]), axes="cyx", channel=[0, 1])
    api.ensure_embedding()
    np.testing.assert_array_equal(got.numpy(), want_seen[-1].numpy())
    # and it is the mean of the two channels, not either one alone
    single = Segmenter(model=gui_model)
    single_seen = _recording(single.predictor)
    single.set_image(img)
    single.ensure_embedding()
    assert not np.array_equal(got.numpy(), single_seen[-1].numpy())
    np.testing.assert_allclose(np.asarray(ctl.segmenter.read_slice()),
                               (img.astype(np.float32) + noise.astype(np.float32)) / 2, rtol=1e-6)

    # clicks still work on the composite; back to the layer alone, the encoder sees the layer alone
    ctl.add_point((50, 60))
    assert ctl.prediction is not None
    picker.value = [c0]
    np.testing.assert_array_equal(widget_seen[-1].numpy(), single_seen[-1].numpy())
    # a channel layer removed from the viewer leaves the composite
    picker.value = [c0, c1]
    viewer.layers.remove(c1)
    assert ctl.channel_layers == [c0] and "c1" not in {layer.name for layer in picker.choices}


def test_napari_layer_with_a_short_leading_axis_is_slices_not_refused(make_napari_viewer, sync, gui_model,  # noqa: F811
                                                                       cells_image):
    """(3, Y, X) is refused from a file or array without axes, but a napari layer shows its slider: slices."""
    img, noise = _channels(cells_image)
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([img, noise, img[::-1]]), name="three")
    widget = open_widget(viewer)
    widget.set_model(gui_model)
    ctl = widget.controller
    assert ctl.segmenter.leading_shape == (3,)
    viewer.dims.set_current_step(0, 2)
    ctl.add_point((50, 60))
    assert ctl.prediction is not None and "error" not in widget._status.value.lower()


def test_batch_widget_segments_the_channel_composite(make_napari_viewer, qtbot, tmp_path, monkeypatch, cells_image):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    from napari_sam.engine.automatic.slice_segmenter import otsu_labels
    from napari_sam.engine.batch.run import open_labels, segment_stack_blocking
    from napari_sam.widgets.batch_widget import BatchWidget

    img, noise = _channels(cells_image)
    a = np.stack([img, img[::-1], img[:, ::-1]])  # three slices: a napari layer, never refused
    b = np.stack([noise] * 3)
    viewer = make_napari_viewer()
    la = viewer.add_image(a, name="a")
    lb = viewer.add_image(b, name="b")
    viewer.add_image(img, name="plane")
    seen = []

    def segment(image):
        seen.append(np.array(image))
        return otsu_labels(image)

    w = BatchWidget(viewer, segment_slice=segment)
    w._image.value = la
    assert {layer.name for layer in w._channels.select.choices} == {"a", "b"}
    assert w._channels.select.value == [la]
    w._channels.select.value = [la, lb]
    w._output.value = tmp_path / "mix.zarr"
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=30000)
    assert len(seen) == 3, w._status.value
    mean = (a.astype(np.float32) + b.astype(np.float32)) / 2
    for z in range(3):
        np.testing.assert_allclose(seen[z], mean[z], rtol=1e-6)
    # the same as the API with the same choice
    want = segment_stack_blocking(np.stack([a, b]), tmp_path / "api.zarr", segment_slice=otsu_labels,
                                  axes="czyx", channel=[0, 1])
    np.testing.assert_array_equal(open_labels(tmp_path / "mix.zarr")[:], open_labels(want.path)[:])
    # the layer alone again: the slices of the layer itself
    seen.clear()
    w._channels.select.value = [la]
    w._output.value = tmp_path / "alone.zarr"
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=30000)
    np.testing.assert_array_equal(np.stack(seen), a)
