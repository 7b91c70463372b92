"""The Labels layers napari-sam adds to a viewer: the preview and the target of accepted objects.

Both are tagged in ``layer.metadata["napari_sam_role"]`` so a later session finds
its own target again instead of creating a second one. New layers go below the
Points prompt layer, which stays active so the next click lands on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import labels_io, layer_data

ROLE = layer_data.ROLE_KEY


def _keep_prompts_active(viewer: Any, points_layer: Any) -> None:
    if points_layer is not None and points_layer in viewer.layers:
        viewer.layers.selection.active = points_layer


def add_preview_layer(viewer: Any, image_layer: Any, points_layer: Any, bind_keys: Callable[[Any], None]) -> Any:
    """Add a preview Labels layer for ``image_layer`` just below ``points_layer``; returns it."""
    layer = labels_io.make_labels_layer(image_layer, labels_io.PREVIEW_NAME, dtype=np.uint8)
    layer.opacity = 0.55
    layer.colormap = labels_io.preview_colormap()
    layer.metadata[ROLE] = "preview"
    layer = viewer.add_layer(layer)
    bind_keys(layer)
    if points_layer is not None and points_layer in viewer.layers:
        layers = viewer.layers
        layers.move(layers.index(layer), layers.index(points_layer))
    _keep_prompts_active(viewer, points_layer)
    return layer


def find_or_add_target(
    viewer: Any, current: Any, image_layer: Any, points_layer: Any, bind_keys: Callable[[Any], None]
) -> Any:
    """The Labels layer accepted objects of ``image_layer`` go to.

    ``current`` when it is still in the viewer (checked against the image's shape);
    else a target napari-sam made earlier for an image of this shape; else a new one.
    """
    if current is not None and current in viewer.layers:
        labels_io.check_target(current, image_layer)
        return current
    want = tuple(layer_data.labels_shape(image_layer))
    for layer in viewer.layers:
        if layer.metadata.get(ROLE) == "target" and np.shape(layer.data) == want:
            return layer
    layer = labels_io.make_labels_layer(image_layer, labels_io.TARGET_NAME)
    layer.metadata[ROLE] = "target"
    layer = viewer.add_layer(layer)
    bind_keys(layer)
    _keep_prompts_active(viewer, points_layer)
    return layer


def remove_layers(viewer: Any, layers: Iterable[Any]) -> None:
    """Remove those of ``layers`` still in the viewer (None entries and a closed viewer are ignored)."""
    if viewer is None:
        return
    for layer in layers:
        if layer is not None and layer in viewer.layers:
            viewer.layers.remove(layer)
