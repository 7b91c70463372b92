"""The controller's channel layers: the image layers whose mean the encoder sees.

:class:`ChannelLayers` is a part of :class:`~napari_sam.adapters.controller.SamController` (which
holds ``image_layer``, ``segmenter`` and ``_channel_layers`` and re-binds the image through
``_on_image_data``); combining the layers into one array lives in :func:`.layer_data.channel_input`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ImageNotSetError
from . import layer_data

__all__ = ["ChannelLayers"]


class ChannelLayers:
    """Channel-layers list of :class:`~napari_sam.adapters.controller.SamController`."""

    @property
    def channel_layers(self) -> list:
        """The image layers whose mean the encoder sees (default: the image layer alone)."""
        return list(self._channel_layers) or ([self.image_layer] if self.image_layer is not None else [])

    def set_channel_layers(self, layers: Any) -> None:
        """Let the encoder see the mean of ``layers`` (grayscale image layers of the image layer's shape,
        e.g. the channels napari opened as separate layers); empty or the image layer alone: that layer.

        Prompts, the preview and the labels stay in the image layer's frame. Raises
        :class:`~napari_sam.errors.InvalidImageError` for layers that cannot be combined.
        """
        if self.image_layer is None:
            raise ImageNotSetError("Pick the image layer before its channels.")
        chosen = tuple(layer_data.unwrap(layer) for layer in layers or ())
        if chosen == (self.image_layer,):
            chosen = ()
        if chosen == self._channel_layers:
            return
        layer_data.channel_input([self.image_layer, *chosen])  # refuse layers that do not fit, before any change
        self._watch_channels(chosen)
        self._on_image_data()

    def _watch_channels(self, layers: tuple) -> None:
        for layer in self._channel_layers:
            if layer is not self.image_layer:
                layer.events.data.disconnect(self._on_image_data)
        self._channel_layers = layers
        for layer in layers:
            if layer is not self.image_layer:
                layer.events.data.connect(self._on_image_data)

    def _set_segmenter_image(self, layer: Any) -> None:
        """Give the segmenter ``layer``'s array (or the channel composite) with the axes the user sees
        (call under the lock); the composite goes through the engine's own channel choice."""
        array, axes, channel = layer_data.channel_input(self._channel_layers or [layer])
        self.segmenter.set_image(array, rgb=layer_data.is_rgb(layer) if channel is None else False,
                                 axes=axes, channel=channel)

