"""Click-ahead in a real viewer: a mouse press starts the decode, the click uses it only when the
prompts match exactly, and the preview is always the plain decode of the layer's prompts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from mouse_events import mouse_event  # noqa: E402
from napari_sam import SamPredictor  # noqa: E402


def mouse_click(layer, press_rc, release_rc=None, modifiers=()):
    """Press at ``press_rc`` and release at ``release_rc`` (world (row, col)) through napari's callbacks."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    release_rc = press_rc if release_rc is None else release_rc
    for kind, rc in (("mouse_press", press_rc), ("mouse_release", release_rc)):
        fn = mouse_press_callbacks if kind == "mouse_press" else mouse_release_callbacks
        fn(layer, mouse_event(kind, rc, modifiers))


@pytest.fixture()
def viewer_ctl(click_viewer):
    _, ctl, img, truth = click_viewer
    ctl.ensure_prompt_layers()
    ctl.embed_now()
    return ctl, img, truth


def _plain(tiny_model, img, points, labels):
    p = SamPredictor(tiny_model, precision="fp32")
    p.set_image(img)
    masks, scores, _ = p.predict(np.asarray(points, float)[:, ::-1], np.asarray(labels),
                                 multimask_output=len(points) == 1)
    return masks[int(np.argmax(scores))]


def test_press_decodes_ahead_and_the_click_uses_it(viewer_ctl, tiny_model):
    ctl, img, truth = viewer_ctl
    rows, cols = np.nonzero(truth)
    a, b = (rows[10], cols[10]), (rows[-10], cols[-10])
    mouse_click(ctl.points_layer, a)
    assert len(ctl.points_layer.data) == 1
    assert (ctl.click_ahead.used, ctl.click_ahead.discarded) == (1, 0)
    np.testing.assert_array_equal(ctl.current_mask(), _plain(tiny_model, img, [a], [1]))
    np.testing.assert_array_equal(ctl.preview_layer.data > 0, ctl.current_mask())
    # a second, negative click (Control held): polarity and the earlier point are part of the prompts
    mouse_click(ctl.points_layer, b, modifiers=("Control",))
    assert ctl.click_ahead.used == 2
    assert list(ctl.prompts().labels) == [1, 0]
    np.testing.assert_array_equal(ctl.current_mask(), _plain(tiny_model, img, [a, b], [1, 0]))


def test_release_elsewhere_discards_the_answer_and_decodes_the_real_click(viewer_ctl, tiny_model):
    ctl, img, truth = viewer_ctl
    rows, cols = np.nonzero(truth)
    press, release = (rows[5], cols[5]), (rows[5] + 1.5, cols[5] - 1.0)  # moved within napari's drag threshold
    mouse_click(ctl.points_layer, press, release)
    assert (ctl.click_ahead.used, ctl.click_ahead.discarded) == (0, 1)
    np.testing.assert_array_equal(ctl.current_mask(), _plain(tiny_model, img, [release], [1]))


def test_busy_segmenter_is_not_used_ahead(viewer_ctl, tiny_model):
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    ctl, img, truth = viewer_ctl
    rows, cols = np.nonzero(truth)
    a = (float(rows[3]), float(cols[3]))
    event = lambda kind: mouse_event(kind, a)  # noqa: E731
    with ctl.busy():  # e.g. an embedding running: the press must neither wait nor decode
        mouse_press_callbacks(ctl.points_layer, event("mouse_press"))
        assert ctl.click_ahead.wait()  # it ran, found the Segmenter busy and gave up
    mouse_release_callbacks(ctl.points_layer, event("mouse_release"))  # the click lands: decoded normally
    assert (ctl.click_ahead.used, ctl.click_ahead.discarded) == (0, 1)
    np.testing.assert_array_equal(ctl.current_mask(), _plain(tiny_model, img, [a], [1]))


def test_a_failing_look_ahead_never_costs_the_click(viewer_ctl, tiny_model, monkeypatch):
    import napari_sam.adapters.prompt_input as prompt_input

    def broken(*args, **kwargs):
        raise RuntimeError("look-ahead broke")

    monkeypatch.setattr(prompt_input, "prompts_after_click", broken)
    ctl, img, truth = viewer_ctl
    rows, cols = np.nonzero(truth)
    a = (rows[7], cols[7])
    mouse_click(ctl.points_layer, a)
    assert len(ctl.points_layer.data) == 1 and ctl.click_ahead.used == 0
    np.testing.assert_array_equal(ctl.current_mask(), _plain(tiny_model, img, [a], [1]))
