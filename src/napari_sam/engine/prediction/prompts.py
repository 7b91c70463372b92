"""Validation of point, label, box and mask prompts in the image's (x, y) pixel frame.

Convention (documented for users): pixel centres sit at integer coordinates,
so a 2D image of shape (H, W) spans x in [-0.5, W - 0.5] and y in
[-0.5, H - 0.5]. Points outside that extent are refused. Boxes are clipped to
the extent (dragging a box past the border is common); a box entirely outside
the image, or with x1 < x0 or y1 < y0, is refused.
"""

from __future__ import annotations

import numpy as np

from ...errors import InvalidPromptError
from ...model.transforms import rowcol_to_xy


def _finite(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        raise InvalidPromptError(f"{what} contain NaN or infinite values.")


def check_points(
    coords: np.ndarray | None, labels: np.ndarray | None, image_hw: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate (N, 2) (x, y) point coordinates and (N,) labels in {0, 1}.

    Returns float64 coords and int64 labels, or (None, None).
    """
    if coords is None and labels is None:
        return None, None
    if coords is None or labels is None:
        raise InvalidPromptError("point_coords and point_labels must be given together.")
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[-1] != 2:
        raise InvalidPromptError(f"point_coords must have shape (N, 2) as (x, y); got {coords.shape}.")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise InvalidPromptError(
            f"point_labels must have shape (N,) matching {coords.shape[0]} points; got {labels.shape}."
        )
    if coords.shape[0] == 0:
        raise InvalidPromptError("point_coords is empty; give at least one point or pass None.")
    _finite(coords, "point_coords")
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise InvalidPromptError(f"point_labels must be 0 (negative) or 1 (positive); got {labels.tolist()}.")
    labels = labels.astype(np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise InvalidPromptError(f"point_labels must be 0 (negative) or 1 (positive); got {labels.tolist()}.")
    h, w = image_hw
    outside = (
        (coords[:, 0] < -0.5) | (coords[:, 0] > w - 0.5) | (coords[:, 1] < -0.5) | (coords[:, 1] > h - 0.5)
    )
    if outside.any():
        bad = coords[outside][0]
        raise InvalidPromptError(
            f"Point (x={bad[0]:g}, y={bad[1]:g}) lies outside the image of width {w} and height {h}; "
            f"valid x is in [-0.5, {w - 0.5}] and y in [-0.5, {h - 0.5}]."
        )
    return coords, labels


def check_box(box: np.ndarray | None, image_hw: tuple[int, int]) -> np.ndarray | None:
    """Validate a box (4,) or boxes (B, 4) as x0, y0, x1, y1; clip to the image extent.

    Returns float64 (B, 4) or None.
    """
    if box is None:
        return None
    box = np.asarray(box, dtype=np.float64)
    if box.shape == (4,):
        box = box[None]
    if box.ndim != 2 or box.shape[-1] != 4:
        raise InvalidPromptError(f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1; got {box.shape}.")
    _finite(box, "box coordinates")
    if (box[:, 2] < box[:, 0]).any() or (box[:, 3] < box[:, 1]).any():
        raise InvalidPromptError(f"box must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0; got {box.tolist()}.")
    h, w = image_hw
    if ((box[:, 2] < -0.5) | (box[:, 0] > w - 0.5) | (box[:, 3] < -0.5) | (box[:, 1] > h - 0.5)).any():
        raise InvalidPromptError(f"box {box.tolist()} lies entirely outside the image of width {w} and height {h}.")
    box = box.copy()
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], -0.5, w - 0.5)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], -0.5, h - 0.5)
    return box


def check_mask_input(mask_input: np.ndarray | None, expected_hw: tuple[int, int]) -> np.ndarray | None:
    """Validate low-resolution mask logits, (1, h, w) or (h, w) with (h, w) = ``expected_hw``."""
    if mask_input is None:
        return None
    m = np.asarray(mask_input, dtype=np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or tuple(m.shape[-2:]) != tuple(expected_hw):
        raise InvalidPromptError(
            f"mask_input must have shape (1, {expected_hw[0]}, {expected_hw[1]}) (low-res logits as returned "
            f"by predict); got {np.shape(mask_input)}."
        )
    _finite(m, "mask_input")
    return m


def check_rowcol_prompts(points, labels, box, image_hw: tuple[int, int]):
    """Check prompts given in napari's (row, col) order on an (H, W) image.

    Errors speak in (row, col), the frame the caller used. Returns (points (N, 2)
    row/col float64 or None, labels (N,) int64 or None, box (4,) row0, col0, row1,
    col1 or None); labels default to all positive.
    """
    h, w = image_hw
    extent = f"the image of {h} rows and {w} columns (valid row in [-0.5, {h - 0.5}], col in [-0.5, {w - 0.5}])"
    pts = lab = bx = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[-1] != 2:
            raise InvalidPromptError(f"points must have shape (N, 2) as (row, col); got {pts.shape}.")
        if labels is None:
            labels = np.ones(len(pts), dtype=np.int64)
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != pts.shape[0]:
            raise InvalidPromptError(f"labels must have shape (N,) matching {pts.shape[0]} points; got {lab.shape}.")
        _finite(pts, "points")
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > h - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > w - 0.5)
        if outside.any():
            bad = pts[outside][0]
            raise InvalidPromptError(f"Point (row={bad[0]:g}, col={bad[1]:g}) lies outside {extent}.")
        xy, lab = check_points(rowcol_to_xy(pts), lab, image_hw)
        pts = rowcol_to_xy(xy)
    elif labels is not None:
        raise InvalidPromptError("labels were given without points.")
    if box is not None:
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (4,):
            raise InvalidPromptError(f"box must be (row0, col0, row1, col1); got shape {b.shape}.")
        _finite(b, "box coordinates")
        if b[2] < b[0] or b[3] < b[1]:
            raise InvalidPromptError(
                f"box must be (row0, col0, row1, col1) with row1 >= row0 and col1 >= col0; got {b.tolist()}."
            )
        if b[2] < -0.5 or b[0] > h - 0.5 or b[3] < -0.5 or b[1] > w - 0.5:
            raise InvalidPromptError(f"box (row0, col0, row1, col1) = {b.tolist()} lies entirely outside {extent}.")
        xyb = check_box(rowcol_to_xy(b.reshape(2, 2)).reshape(4), image_hw)[0]
        bx = rowcol_to_xy(xyb.reshape(2, 2)).reshape(4)
    return pts, lab, bx
