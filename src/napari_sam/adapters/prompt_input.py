"""The controller's prompt input: the Points and Shapes prompt layers, clicks and boxes, click polarity
(negative mode) and the click-ahead decode started at a mouse press (:mod:`.click_ahead`).

:class:`PromptInput` is a part of :class:`~napari_sam.adapters.controller.SamController` (which
holds the state it reads: ``points_layer``, ``boxes_layer``, ``image_layer``, ``segmenter``,
``_polarity``, ``_ahead``, ``_edit``, ``_muted``); the prompts' reading and writing on napari
layers live in :mod:`.prompt_layers`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ImageNotSetError, NapariSamError
from . import prompt_layers
from .click_ahead import prompts_after_click
from .label_edit import predict_prompts

__all__ = ["PromptInput"]


class PromptInput:
    """Prompt layers and prompt handling of :class:`~napari_sam.adapters.controller.SamController`."""

    @property
    def negative_mode(self) -> bool:
        """When True, plain clicks are negative and Alt/Control-clicks positive."""
        return bool(self._polarity and self._polarity.negative_mode)

    @negative_mode.setter
    def negative_mode(self, value: bool) -> None:
        if self._polarity is None:
            self._polarity = prompt_layers.PolarityClicks()
        self._polarity.negative_mode = bool(value)
        if self.points_layer is not None:
            self.points_layer.feature_defaults[prompt_layers.POSITIVE] = not value
            self.points_layer.feature_defaults = self.points_layer.feature_defaults


    def ensure_prompt_layers(self) -> None:
        """Create (or re-create after deletion) the Points and Shapes prompt layers for the image."""
        viewer = self.viewer
        if self.image_layer is None:
            raise ImageNotSetError("No image layer is selected for napari-sam.")
        if self.boxes_layer is None or self.boxes_layer not in viewer.layers:
            self.boxes_layer = viewer.add_layer(prompt_layers.make_boxes_layer(self.image_layer))
            self.boxes_layer.events.data.connect(self._on_prompts_changed)
            self._bind_keys(self.boxes_layer)
        if self.points_layer is None or self.points_layer not in viewer.layers:
            layer = prompt_layers.make_points_layer(self.image_layer)
            if self._polarity is None:
                self._polarity = prompt_layers.PolarityClicks()
            layer.mouse_drag_callbacks.insert(0, self._polarity)
            layer.mouse_drag_callbacks.insert(1, self._decode_ahead)
            self.points_layer = viewer.add_layer(layer)
            self.points_layer.events.data.connect(self._on_prompts_changed)
            self._bind_keys(self.points_layer)
            self.points_layer.mode = "add"
        viewer.layers.selection.active = self.points_layer

    def _decode_ahead(self, layer: Any, event: Any) -> None:
        """Mouse press on the Points layer in add mode: start decoding the click it will become."""
        if getattr(event, "type", None) != "mouse_press" or str(getattr(layer, "mode", "")) != "add":
            return
        if getattr(event, "button", 1) != 1 or self._muted or self.segmenter is None or self.image_layer is None:
            return
        try:
            key = self.current_key()
            seg = self.segmenter
            if layer is not self.points_layer or not seg.has_embedding(key or None):
                return
            positive = bool(np.asarray(layer.feature_defaults[prompt_layers.POSITIVE])[0])
            p = prompts_after_click(layer, self.boxes_layer, self.image_layer, key,
                                    layer.world_to_data(event.position), positive)
            if p is None:
                return
            edit = self._edit if self._edit is not None and self._edit.key == key else None
        except Exception:  # noqa: BLE001 - the look-ahead must never cost the click, which reports errors itself
            return

        def decode():
            pred = predict_prompts(seg, p, key, edit)
            pred.masks[pred.best]  # upscale the candidate that will be shown, off the GUI thread too
            return pred

        self._ahead.start(decode, seg, p, key, edit)

    def _bind_keys(self, layer: Any) -> None:
        from .keys import bind_controller_keys

        bind_controller_keys(layer, self)

    def add_point(self, rowcol, positive: bool = True) -> None:
        """Add a click at (row, col) of the displayed slice (image data frame); the preview updates."""
        self.ensure_prompt_layers()
        prompt_layers.add_point_on_slice(self.points_layer, self.image_layer, self.current_key(), rowcol, positive)
        self.points_layer.feature_defaults[prompt_layers.POSITIVE] = not self.negative_mode

    def add_box(self, box) -> None:
        """Add a box prompt (row0, col0, row1, col1) on the displayed slice (image data frame)."""
        self.ensure_prompt_layers()
        prompt_layers.add_box_on_slice(self.boxes_layer, self.image_layer, self.current_key(), box)

    def prompts(self) -> prompt_layers.SlicePrompts:
        """The prompts of the displayed slice, in the image's data frame."""
        return prompt_layers.read_prompts(self.points_layer, self.boxes_layer, self.image_layer, self.current_key())

    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if self._muted or action.lower().endswith("ing"):  # adding/removing/changing: wait for the end
            return
        self.update_preview()


    def _has_prompts(self) -> bool:
        try:
            return not self.prompts().empty
        except NapariSamError:
            return False

