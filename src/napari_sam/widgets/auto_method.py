"""The automatic-method choice and the bundled-model note, shared by the batch and propagation widgets.

``MethodChoice`` is a "method" list: ``auto`` (the model's instance decoder when it has one, else
grid prompts), ``ais`` (the decoder) or ``amg`` (grid prompts); :meth:`MethodChoice.method` gives
what :class:`~napari_sam.engine.automatic.settings.AutoSettings` takes. ``TinyNote`` is a one-line
label shown while the bundled ``tiny`` model is picked, saying what it is and what to choose for real data.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Label

AUTO = "auto"
#: choice -> tooltip line
METHODS = {
    AUTO: "the model's instance decoder when it has one, else grid prompts",
    "ais": "the model's trained instance decoder (fast; models listed by 'napari-sam models')",
    "amg": "a grid of point prompts (any model; slower)",
}


class MethodChoice(ComboBox):
    """The "method" list (auto / ais / amg)."""

    def __init__(self, label: str = "method") -> None:
        super().__init__(label=label, choices=list(METHODS), value=AUTO,
                         tooltip="\n".join(f"{k}: {v}" for k, v in METHODS.items()))

    def method(self) -> str | None:
        """``None`` for auto, else ``"ais"`` / ``"amg"``."""
        return None if self.value == AUTO else str(self.value)


class TinyNote(Label):
    """One line shown while the bundled model is picked in ``combo`` (hidden otherwise)."""

    def __init__(self, combo: ComboBox) -> None:
        super().__init__(label="note", value="", visible=False)
        self._combo = combo
        combo.changed.connect(self.update_for)
        self.update_for()

    def update_for(self, _value=None) -> None:
        from ..engine.models.model_profile import tiny_note

        note = tiny_note(self._combo.value) if isinstance(self._combo.value, str) else None
        self.value = note or ""
        self.visible = note is not None
        try:
            self.native.setWordWrap(True)
        except AttributeError:  # pragma: no cover - another backend
            pass


__all__ = ["AUTO", "METHODS", "MethodChoice", "TinyNote"]
