"""The one model picker of the dock widgets (widgets/model_picker.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_picker_offers_only_loadable_files_and_refuses_a_missing_one(qtbot, tmp_path):
    from napari_sam.errors import NapariSamError
    from napari_sam.widgets.model_picker import FROM_FILE, ModelPicker

    picker = ModelPicker("start from", extra=lambda: ["my.pt"])
    assert "safetensors" not in picker.file.filter and "*.pt" in picker.file.filter
    assert picker.combo.choices[0] == "my.pt" and picker.combo.choices[-1] == FROM_FILE
    picker.combo.value = FROM_FILE
    assert picker.file.visible is not False
    picker.file.value = tmp_path / "missing.pt"
    with pytest.raises(NapariSamError, match="start from: from file"):
        picker.spec()
    (tmp_path / "there.pt").write_bytes(b"")
    picker.file.value = tmp_path / "there.pt"
    assert picker.spec() == str(tmp_path / "there.pt")
    assert FROM_FILE not in ModelPicker(from_file=False).combo.choices


def test_every_dock_widget_uses_the_picker(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_SYNC", "1")
    import napari_sam.widgets.main_widget as mw
    from napari_sam.widgets.batch_widget import BatchWidget
    from napari_sam.widgets.propagation_widget import PropagationWidget
    from napari_sam.widgets.training_widget import TrainingWidget

    monkeypatch.setattr(mw, "_default_model", lambda: None)
    viewer = make_napari_viewer()
    for widget in (mw.SamWidget(viewer), BatchWidget(viewer), TrainingWidget(viewer), PropagationWidget(viewer)):
        pickers = [c for c in widget if getattr(c, "label", None) == "model file"]
        for field in pickers:
            assert "safetensors" not in field.filter
        assert widget._model.choices  # filled from the zoo by the picker
