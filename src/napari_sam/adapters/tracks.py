"""Object centroids per frame as napari Tracks: one track per label id through a time-lapse.

A tracking run gives every object the same label id on every frame; the centroid of each
id on each frame where it is present is a point of that id's track. napari's Tracks layer
takes (N, 4) rows ``(track_id, t, row, col)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidImageError


def tracks_from_labels(labels: Any) -> np.ndarray:
    """(N, 4) float ``(track_id, t, row, col)`` rows, sorted by id then t, from (T, H, W) labels
    (frames read one at a time); a frame where an id is absent has no row for it."""
    from scipy import ndimage as ndi

    if len(labels.shape) != 3:
        raise InvalidImageError(f"Tracks need (T, H, W) labels; got shape {tuple(labels.shape)}.")
    rows = []
    for t in range(labels.shape[0]):
        plane = np.asarray(labels[t])
        ids = np.unique(plane)
        ids = ids[ids > 0]
        if not len(ids):
            continue
        centres = ndi.center_of_mass(np.ones_like(plane, np.float32), plane, ids)
        rows += [(float(i), float(t), r, c) for i, (r, c) in zip(ids, centres)]
    data = np.array(rows, np.float64).reshape(-1, 4)
    return data[np.lexsort((data[:, 1], data[:, 0]))]


def add_tracks_layer(viewer: Any, labels_layer: Any, name: str | None = None) -> Any:
    """Add (or replace) a Tracks layer of ``labels_layer``'s object centroids, in its world frame.

    Returns the layer; raises :class:`InvalidImageError` when there are no objects.
    """
    from . import layer_data

    data = tracks_from_labels(layer_data.layer_array(labels_layer))
    if not len(data):
        raise InvalidImageError(f"{labels_layer.name!r} holds no objects to make tracks of.")
    name = name or f"{labels_layer.name} tracks"
    kw = {"scale": tuple(labels_layer.scale), "translate": tuple(labels_layer.translate)}
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        return layer
    return viewer.add_tracks(data, name=name, **kw)


__all__ = ["add_tracks_layer", "tracks_from_labels"]
