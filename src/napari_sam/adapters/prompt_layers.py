"""Prompt layers: a Points layer of clicks and a Shapes layer of box prompts.

Click polarity lives in the Points layer's feature column ``positive`` (bool)
and is *shown* by the face colour mapped from that column (green positive,
magenta negative); colour never carries meaning by itself. A click is
negative when Alt or Control is held, or when the layer's
:attr:`PromptPoints.negative_mode` toggle is on (then a modifier makes it
positive).

Both layers are created with the image layer's ``ndim``, scale and translate,
so a prompt's data coordinates are (..., row, col) of the image; the leading
coordinates say on which 2D slice the prompt was made, and only prompts of the
displayed slice are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .layer_data import ROLE_KEY, layer_to_layer

POSITIVE = "positive"
POINT_COLORS = {True: "#00e060", False: "#ff2080"}
POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
NEGATIVE_MODIFIERS = ("Alt", "Control")


@dataclass(frozen=True)
class SlicePrompts:
    """Prompts of one 2D slice in the image layer's data frame.

    Attributes:
        points: (N, 2) float64 (row, col).  labels: (N,) int64, 1 positive / 0 negative.
        box: (4,) float64 (row0, col0, row1, col1) or None (the most recent rectangle).
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None


def _transform_kwargs(image_layer: Any) -> dict:
    return {"scale": tuple(image_layer.scale), "translate": tuple(image_layer.translate)}


def make_points_layer(image_layer: Any) -> Any:
    """A new, empty Points layer for clicks on ``image_layer`` (not yet added to a viewer)."""
    from napari.layers import Points

    layer = Points(
        np.empty((0, image_layer.ndim)),
        ndim=image_layer.ndim,
        name=POINTS_NAME,
        features={POSITIVE: np.empty(0, dtype=bool)},
        feature_defaults={POSITIVE: True},
        face_color=POSITIVE,
        face_color_cycle={"colormap": POINT_COLORS, "fallback_color": "white"},
        border_color="white",
        size=max(4.0, 0.025 * max(image_layer.extent.data[1][-2:] - image_layer.extent.data[0][-2:])),
        **_transform_kwargs(image_layer),
    )
    layer.metadata[ROLE_KEY] = "points"
    return layer


def make_boxes_layer(image_layer: Any) -> Any:
    """A new, empty Shapes layer whose rectangles are box prompts (not yet added to a viewer)."""
    from napari.layers import Shapes

    layer = Shapes(
        ndim=image_layer.ndim,
        name=BOXES_NAME,
        face_color="transparent",
        edge_color="#ffd000",
        edge_width=max(1.0, 0.004 * max(image_layer.extent.data[1][-2:] - image_layer.extent.data[0][-2:])),
        **_transform_kwargs(image_layer),
    )
    layer.metadata[ROLE_KEY] = "boxes"
    return layer


class PolarityClicks:
    """Mouse callback for a Points layer: sets the polarity of the next click from modifiers and a toggle.

    Insert it first in ``layer.mouse_drag_callbacks`` (before the add-mode
    callback) so that the point being added takes the right default.
    """

    def __init__(self) -> None:
        self.negative_mode = False

    def polarity(self, modifiers: Any) -> bool:
        """True (positive) unless exactly one of {modifier held, negative_mode} holds."""
        held = any(m in NEGATIVE_MODIFIERS for m in (str(getattr(k, "name", k)) for k in modifiers))
        return not (held ^ self.negative_mode)

    def __call__(self, layer: Any, event: Any) -> None:
        layer.feature_defaults[POSITIVE] = self.polarity(getattr(event, "modifiers", ()))
        layer.feature_defaults = layer.feature_defaults  # notify napari of the new default


def install_polarity(layer: Any) -> PolarityClicks:
    """Attach a :class:`PolarityClicks` to a Points layer (first in its drag callbacks) and return it."""
    cb = PolarityClicks()
    layer.mouse_drag_callbacks.insert(0, cb)
    return cb


def add_point(layer: Any, data_coords: Any, positive: bool = True) -> None:
    """Append one click (data coordinates of the points layer) with its polarity, as a click would."""
    layer.feature_defaults[POSITIVE] = bool(positive)
    layer.feature_defaults = layer.feature_defaults
    layer.add(np.asarray(data_coords, dtype=np.float64)[None])


def on_slice(coords: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
    """(N,) bool: rows of (N, D) coords whose leading D-2 coordinates round to ``key``."""
    if not key:
        return np.ones(len(coords), dtype=bool)
    lead = np.round(coords[:, : len(key)]).astype(np.int64)
    return np.all(lead == np.asarray(key, dtype=np.int64), axis=1)


def read_prompts(points_layer: Any, boxes_layer: Any, image_layer: Any, key: tuple[int, ...]) -> SlicePrompts:
    """The prompts of slice ``key`` in ``image_layer``'s data frame (either prompt layer may be None)."""
    pts = np.empty((0, 2))
    labels = np.empty(0, dtype=np.int64)
    if points_layer is not None and len(points_layer.data):
        coords = layer_to_layer(points_layer, image_layer, points_layer.data)
        feats = points_layer.features
        if POSITIVE in feats and len(feats) == len(coords):
            pos = np.asarray(feats[POSITIVE], dtype=bool)
        else:
            pos = np.ones(len(coords), dtype=bool)
        keep = on_slice(coords, key)
        pts = coords[keep][:, -2:]
        labels = pos[keep].astype(np.int64)
    box = None
    if boxes_layer is not None and len(boxes_layer.data):
        for verts, kind in zip(reversed(boxes_layer.data), reversed(boxes_layer.shape_type)):
            if kind != "rectangle":
                continue
            coords = layer_to_layer(boxes_layer, image_layer, verts)
            if not on_slice(coords, key).all():
                continue
            rc = coords[:, -2:]
            box = np.concatenate([rc.min(axis=0), rc.max(axis=0)])
            break
    return SlicePrompts(pts, labels, box)


def clear_prompts(points_layer: Any, boxes_layer: Any) -> None:
    """Remove every prompt from both layers (either may be None)."""
    if points_layer is not None and len(points_layer.data):
        points_layer.data = np.empty((0, points_layer.ndim))
    if boxes_layer is not None and len(boxes_layer.data):
        boxes_layer.data = []


def add_point_on_slice(points_layer: Any, image_layer: Any, key: tuple[int, ...], rowcol: Any, positive: bool) -> None:
    """Add a click at (row, col) of slice ``key`` given in ``image_layer``'s data frame."""
    data = np.concatenate([np.asarray(key, float), np.asarray(rowcol, float)])
    add_point(points_layer, layer_to_layer(image_layer, points_layer, data[None])[0], positive)


def add_box_on_slice(boxes_layer: Any, image_layer: Any, key: tuple[int, ...], box: Any) -> None:
    """Add a rectangle (row0, col0, row1, col1) on slice ``key`` given in ``image_layer``'s data frame."""
    lead = np.asarray(key, float)
    r0, c0, r1, c1 = (float(v) for v in box)
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])
    verts = np.concatenate([np.repeat(lead[None], 4, 0), corners], axis=1)
    boxes_layer.add_rectangles(layer_to_layer(image_layer, boxes_layer, verts))
