"""The "channels" list of the dock widgets: which image layers the encoder sees, as their mean.

napari opens a multichannel file as one layer per channel. Next to the chosen image layer, the
list offers every grayscale image layer of the same shape; the encoder sees the mean of the
selected ones (default: the chosen layer alone). The selection becomes ``(array, axes, channel)``
through :func:`napari_sam.adapters.layer_data.channel_input`, which the engine's channel choice
(:func:`napari_sam.engine.images.channels.select_channels`) reduces exactly as ``set_image(...,
channel=[...])`` in a script does.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Select

from ..adapters import layer_data

TOOLTIP = ("Channels SAM sees: their mean (e.g. nucleus + membrane). The list holds the grayscale image layers "
           "of the chosen image's shape (napari opens each channel of a file as its own layer); "
           "default: the image alone.")


class ChannelPicker:
    """A multi-select of image layers that can be averaged with the chosen image layer."""

    def __init__(self, viewer: Any, label: str = "channels") -> None:
        self._viewer = viewer
        self._layer: Any = None
        self.select = Select(label=label, choices=self._choices, allow_multiple=True, tooltip=TOOLTIP)
        self.select.native.setMaximumHeight(72)  # a few rows: the dock stays compact

    def _choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        if self._layer is None:
            return []
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)
                and (layer is self._layer or layer_data.can_be_channels(self._layer, layer))]

    def follow(self, layer: Any) -> None:
        """The chosen image layer changed: offer its same-shaped layers, select it alone."""
        self._layer = layer_data.unwrap(layer)
        self._select([self._layer])

    def refresh(self) -> None:
        """Layers were added or removed: update the list, keeping the selection that still exists."""
        self._select(list(self.select.value) or [self._layer])

    def _select(self, wanted: list) -> None:
        """Renew the choices and select those of ``wanted`` still offered (a layer being removed is not)."""
        self.select.reset_choices()
        present = [c[1] for c in self._choices()]
        self.select.value = [layer for layer in wanted if any(layer is p for p in present)]

    def layers(self) -> list:
        """The selected layers (the chosen image layer when nothing is selected)."""
        chosen = list(self.select.value)
        return chosen or ([self._layer] if self._layer is not None else [])

    def engine_input(self) -> tuple[Any, str, list[int] | None]:
        """``(array, axes, channel)`` for ``Segmenter.set_image`` / ``segment_stack``."""
        return layer_data.channel_input(self.layers())
