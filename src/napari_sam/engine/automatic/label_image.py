"""Mask clean-up (small islands and holes) and masks -> instance label image.

Masks here are box-local: an (h, w) bool array holding the mask inside its
inclusive box (x0, y0, x1, y1) of an (H, W) image (x = column, y = row).
Connected components use 8-connectivity, like the reference implementation
(which uses OpenCV); scipy's labelling numbers components in the same raster
order, so ties ("keep the largest island") are broken the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EIGHT = np.ones((3, 3), dtype=bool)


#: default smallest object (pixels) of batch/command-line segmentation: smaller specks, e.g. slivers of
#: overlapping masks, are dropped and smaller holes/islands of a mask are cleaned (``--min-area``)
MIN_OBJECT_AREA = 64


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``.

    Args:
        mask: (H, W) bool, a whole image.
    Returns:
        the new (H, W) bool mask and whether it changed. Dropping every island
        would empty the mask; then the largest island is kept.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    holes = mode == "holes"
    working = ~mask if holes else mask
    labels, n = ndimage.label(working, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if holes:
        fill = np.concatenate(([True], small))  # label 0 = the mask itself
    else:
        fill = np.concatenate(([False], ~small))
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[labels], True


def _outside_strips(box: Sequence[int], shape: tuple[int, int]) -> list[int]:
    """Areas of the image strips left, right, above and below an inclusive box (present ones only)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = shape
    areas = [x0 * h, (w - 1 - x1) * h, y0 * w, (h - 1 - y1) * w]
    return [a for a in areas if a > 0]


def clean_local_mask(
    local: np.ndarray, box: Sequence[int], shape: tuple[int, int], min_area: int
) -> tuple[np.ndarray, list[int], bool]:
    """:func:`remove_small_regions` (holes, then islands) for a box-local mask.

    Works inside the box (plus a one-pixel ring) when that is exactly
    equivalent to working on the whole image - always for islands, and for
    holes when every background strip outside the box is at least
    ``min_area`` (then a hole touching the box edge is connected to such a
    strip and is never small); otherwise on the whole image.

    Args:
        local: (h, w) bool mask inside ``box``.  box: inclusive (x0, y0, x1, y1).
        shape: (H, W) of the image.
    Returns:
        the new box-local mask, its new inclusive box (list of 4 ints), changed.
    """
    x0, y0 = int(box[0]), int(box[1])
    if not local.any():
        return local, [int(v) for v in box], False
    h, w = shape
    strips = _outside_strips(box, shape)
    if all(a >= min_area for a in strips):
        pads = (
            (1 if y0 > 0 else 0, 1 if y0 + local.shape[0] < h else 0),
            (1 if x0 > 0 else 0, 1 if x0 + local.shape[1] < w else 0),
        )
        padded = np.pad(local, pads)
        ring = np.zeros_like(padded)
        ring[: pads[0][0]] = True
        ring[padded.shape[0] - pads[0][1] :] = True
        ring[:, : pads[1][0]] = True
        ring[:, padded.shape[1] - pads[1][1] :] = True
        filled, changed_h = _fill_small_holes(padded, ring, min_area)
        work = filled[pads[0][0] : pads[0][0] + local.shape[0], pads[1][0] : pads[1][0] + local.shape[1]]
    else:
        full = np.zeros(shape, dtype=bool)
        full[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
        full, changed_h = remove_small_regions(full, min_area, "holes")
        full, changed_i = remove_small_regions(full, min_area, "islands")
        if not (changed_h or changed_i):
            return local, [int(v) for v in box], False
        new_local, new_box = _crop_to_content(full, 0, 0)
        return new_local, new_box, True
    work, changed_i = remove_small_regions(work, min_area, "islands")
    if not (changed_h or changed_i):
        return local, [int(v) for v in box], False
    new_local, new_box = _crop_to_content(work, x0, y0)
    return new_local, new_box, True


def _fill_small_holes(padded: np.ndarray, ring: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fill background components of ``padded`` smaller than ``min_area`` that do not touch ``ring``."""
    from scipy import ndimage

    labels, n = ndimage.label(~padded, structure=_EIGHT)
    if n == 0:
        return padded, False
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    open_ = np.zeros(n + 1, dtype=bool)
    open_[np.unique(labels[ring])] = True
    small = (sizes < min_area) & ~open_
    small[0] = False
    if not small.any():
        return padded, False
    return padded | small[labels], True


def _crop_to_content(mask: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray, list[int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask[:1, :1].copy(), [0, 0, 0, 0]
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    return mask[r0 : r1 + 1, c0 : c1 + 1].copy(), [x0 + int(c0), y0 + int(r0), x0 + int(c1), y0 + int(r1)]


def paint_label_image(
    local_masks: Sequence[np.ndarray], boxes: Sequence[Sequence[int]], scores: Sequence[float], shape: tuple[int, int],
    min_area: int = 0,
) -> np.ndarray:
    """Instance label image from box-local masks; where masks overlap, the higher score wins.

    Masks are painted in increasing score order, so a higher-scoring mask is
    painted last and keeps the overlap (ties: the later mask in the input wins).
    Masks left with fewer than ``max(1, min_area)`` visible pixels (e.g. slivers
    left over where larger masks overlap) are dropped and ids renumbered 1..K
    without gaps, in painting order (so id 1 is the lowest-scoring surviving mask).

    Args:
        local_masks: N (h_i, w_i) bool arrays.  boxes: N inclusive (x0, y0, x1, y1).
        scores: N floats.  shape: (H, W).  min_area: smallest object kept, in pixels.
    Returns:
        (H, W) int32 label image, 0 = background.
    """
    labels = np.zeros(shape, dtype=np.int32)
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    for new_id, i in enumerate(order, start=1):
        m = local_masks[i]
        x0, y0 = int(boxes[i][0]), int(boxes[i][1])
        view = labels[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        view[m] = new_id
    areas = np.bincount(labels.ravel(), minlength=len(order) + 1)
    present = np.flatnonzero(areas >= max(1, int(min_area)))
    present = present[present > 0]
    if present.size != len(order):
        lut = np.zeros(len(order) + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        labels = lut[labels]
    return labels
