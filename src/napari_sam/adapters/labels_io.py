"""Writing masks into Labels layers: the preview layer, commits as minimal diffs, undo/redo.

A commit touches one 2D slice of the target; it is stored as a :class:`LabelDiff`
holding the bounding-box crop of that slice with the old and new values. The
new crop is computed on a copy and assigned in one numpy operation, so an error
while computing it leaves the target unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidImageError, InvalidPromptError
from .layer_data import labels_shape

PREVIEW_NAME = "SAM preview"
# RGBA of every non-zero preview pixel: magenta, far from the colours napari gives committed ids 1, 2, ...
PREVIEW_COLOR = (1.0, 0.0, 1.0, 1.0)
TARGET_NAME = "SAM labels"


@dataclass(frozen=True)
class LabelDiff:
    """One change of a Labels array: ``data[index] = new`` undoes with ``data[index] = old``.

    Attributes:
        index: a tuple of ints (slice key) followed by two ``slice`` objects (rows, cols).
        old: (h, w) values before.  new: (h, w) values after (the target's dtype).
        label_id: the id written.
    """

    index: tuple
    old: np.ndarray
    new: np.ndarray
    label_id: int

    @property
    def changed(self) -> bool:
        return not np.array_equal(self.old, self.new)


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def preview_colormap() -> Any:
    """One colour (:data:`PREVIEW_COLOR`) for every non-zero value: a preview never looks like a committed object."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: (0.0, 0.0, 0.0, 0.0)})


def make_labels_layer(image_layer: Any, name: str, dtype=np.int32) -> Any:
    """A new, zero Labels layer the shape of ``image_layer`` (channels dropped), same scale/translate."""
    from napari.layers import Labels

    return Labels(
        np.zeros(labels_shape(image_layer), dtype=dtype),
        name=name,
        scale=tuple(image_layer.scale),
        translate=tuple(image_layer.translate),
    )


def check_target(target: Any, image_layer: Any) -> None:
    """Refuse a target Labels layer whose shape differs from the image's (:class:`InvalidImageError`)."""
    want = labels_shape(image_layer)
    got = tuple(int(s) for s in np.shape(target.data))
    if getattr(target, "multiscale", False):
        raise InvalidImageError(f"Labels layer {target.name!r} is multiscale; pick a single-scale Labels layer.")
    if got != want:
        raise InvalidImageError(
            f"Labels layer {target.name!r} has shape {got} but image {image_layer.name!r} needs {want}; "
            "pick another target or let napari-sam create a new one."
        )


def next_label_id(target: Any) -> int:
    """An id unused in the target: one more than its maximum."""
    data = np.asarray(target.data)
    return int(data.max()) + 1 if data.size else 1


def build_commit(
    data: Any, key: tuple[int, ...], mask: np.ndarray, label_id: int, overwrite: bool = False, replace_id: bool = False
) -> LabelDiff | None:
    """The diff that writes ``mask`` as ``label_id`` into slice ``key`` of ``data``; None if nothing changes.

    Args:
        data: (..., H, W) integer labels array.  mask: (H, W) bool.
        overwrite: paint over other labels (default: only background and ``label_id`` pixels change).
        replace_id: pixels of ``label_id`` outside ``mask`` become background (re-commit of an edited object).
    """
    plane = data[key] if key else data
    if tuple(plane.shape) != tuple(mask.shape):
        raise InvalidPromptError(f"Mask of shape {mask.shape} does not fit the labels slice of shape {plane.shape}.")
    info = np.iinfo(np.asarray(plane[:1, :1]).dtype) if np.asarray(plane[:1, :1]).dtype.kind in "iu" else None
    if info is not None and not 0 < label_id <= info.max:
        raise InvalidPromptError(f"Label id {label_id} does not fit the labels dtype (max {info.max}).")
    region = mask.copy()
    if replace_id:
        region |= np.asarray(plane) == label_id
    box = _bbox(region)
    if box is None:
        return None
    old = np.array(plane[box])  # a copy
    new = old.copy()
    m = mask[box]
    if replace_id:
        new[(old == label_id) & ~m] = 0
    writable = m if overwrite else m & ((old == 0) | (old == label_id))
    new[writable] = label_id
    diff = LabelDiff(tuple(key) + box, old, new, int(label_id))
    return diff if diff.changed else None


def apply_diff(layer: Any, diff: LabelDiff, undo: bool = False) -> None:
    """Write ``diff.new`` (``diff.old`` with ``undo``) into the layer's data and refresh it."""
    layer.data[diff.index] = diff.old if undo else diff.new
    layer.refresh()


def show_preview(
    layer: Any,
    key: tuple[int, ...],
    mask: np.ndarray | None,
    clear_key: tuple[int, ...] | None = None,
    value: int = 1,
    clear_box: tuple[slice, slice] | None = None,
    blank: bool = False,
) -> tuple[slice, slice] | None:
    """Show ``mask`` (H, W) bool on slice ``key`` of the preview layer; returns the mask's bounding box.

    The slice ``clear_key`` (where the previous preview was shown; default: all) is cleared
    first: only its region ``clear_box`` when given (the box this function returned for that
    preview), the whole slice otherwise. ``blank``: the layer is known to be all zero (nothing
    to clear). When only boxes change on the displayed slice, only that region of the canvas
    is redrawn.
    """
    data = layer.data
    if blank:
        clear_key, clear_box = key, (slice(0, 0), slice(0, 0))
    elif clear_key is None:
        data[...] = 0
        clear_box = None
    else:
        old_plane = data[clear_key] if clear_key else data
        if clear_box is not None:
            if not blank:
                old_plane[clear_box] = 0
        else:
            old_plane[...] = 0
    box = None
    if mask is not None:
        plane = data[key] if key else data
        box = _bbox(mask)
        if box is not None:
            plane[box][mask[box]] = value
    if clear_box is None or clear_key != key or not _redraw_region(layer, key, _union(clear_box, box)):
        layer.refresh()
    return box


def _union(a: tuple[slice, slice] | None, b: tuple[slice, slice] | None) -> tuple[slice, slice] | None:
    if a is None or b is None or a[0].stop <= a[0].start:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _redraw_region(layer: Any, key: tuple[int, ...], box: tuple[slice, slice] | None) -> bool:
    """Redraw only ``box`` of slice ``key`` of a Labels layer; False when that is not possible here.

    This is what napari's own painting does (``Labels.data_setitem``): recolour the region of
    the displayed slice and send it as a partial texture update, instead of re-slicing and
    re-uploading the whole layer. It relies on napari internals, so anything unexpected
    (another napari version, a 3D view, transposed axes, a slice not displayed) returns False
    and the caller refreshes the whole layer instead.
    """
    if box is None or box[0].stop <= box[0].start or box[1].stop <= box[1].start:
        return True  # nothing was shown and nothing is: nothing to redraw
    try:
        sl, slice_input = layer._slice, layer._slice_input
        plane = layer.data[key] if key else layer.data
        raw, view = sl.image.raw, sl.image.view
        if (
            not layer.loaded
            or slice_input.ndisplay != 2
            or tuple(slice_input.order) != tuple(range(layer.ndim))
            or layer.contour != 0
            or raw.shape != plane.shape
            or view.shape[:2] != plane.shape
            or not np.may_share_memory(raw, plane)
        ):
            return False
        view[box] = layer.colormap._data_to_texture(raw[box])
        layer.events.labels_update(data=view[box], offset=[box[0].start, box[1].start])
        return True
    except Exception:  # noqa: BLE001  (napari internals differ: fall back to a full refresh)
        return False
