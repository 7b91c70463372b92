"""Linking 2D instance labels of consecutive slices into 3D objects.

Each slice of a stack is segmented on its own, so its instance ids are local
to the slice. Linking gives the instances that continue from one slice to the
next the same 3D id:

1. For slice ``z`` (local ids) and the already linked slice ``z - 1`` (3D ids),
   the IoU of every pair of overlapping instances is computed from one
   contingency count of the two label images.
2. Pairs are matched one-to-one by the Hungarian algorithm on the IoU matrix
   (:func:`scipy.optimize.linear_sum_assignment`, maximising total IoU).
3. A matched pair with IoU >= ``iou_threshold`` (default 0.3) continues the 3D
   object; every other instance of slice ``z`` starts a new 3D id
   (a split keeps the id on its best-overlapping part, a merge continues the
   best-overlapping object only).

Only the previous slice is compared, so an object absent from one slice and
present again later gets a new id. Linking streams slice by slice and needs
two slices in memory; new ids are allocated in increasing order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

from ...errors import InvalidImageError


def iou_matrix(prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between the instances of two (H, W) integer label images (0 = background).

    Returns:
        (prev_ids (P,), cur_ids (C,), iou (P, C) float64).
    """
    if prev.shape != cur.shape:
        raise InvalidImageError(f"Label slices differ in shape: {prev.shape} vs {cur.shape}.")
    prev_ids, prev_inv, prev_area = np.unique(prev, return_inverse=True, return_counts=True)
    cur_ids, cur_inv, cur_area = np.unique(cur, return_inverse=True, return_counts=True)
    inter = np.zeros((len(prev_ids), len(cur_ids)), dtype=np.int64)
    np.add.at(inter, (prev_inv.ravel(), cur_inv.ravel()), 1)
    union = prev_area[:, None] + cur_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    keep_p, keep_c = prev_ids != 0, cur_ids != 0
    return prev_ids[keep_p], cur_ids[keep_c], iou[np.ix_(keep_p, keep_c)]


def match_instances(prev: np.ndarray, cur: np.ndarray, iou_threshold: float = 0.3) -> dict[int, int]:
    """``{cur_id: prev_id}`` for instances of ``cur`` continuing one of ``prev`` (Hungarian, IoU >= threshold)."""
    prev_ids, cur_ids, iou = iou_matrix(prev, cur)
    if iou.size == 0:
        return {}
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return {
        int(cur_ids[c]): int(prev_ids[r]) for r, c in zip(rows, cols) if iou[r, c] >= iou_threshold and iou[r, c] > 0
    }


class StackLinker:
    """Streaming linker: feed slices in z order with :meth:`link`, get 3D-id slices back."""

    def __init__(self, iou_threshold: float = 0.3) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1]; got {iou_threshold}.")
        self.iou_threshold = float(iou_threshold)
        self.next_id = 1
        self._prev: np.ndarray | None = None

    def link(self, local: np.ndarray) -> np.ndarray:
        """(H, W) int slice-local instance labels -> (H, W) int32 3D ids."""
        local = np.asarray(local)
        if local.ndim != 2:
            raise InvalidImageError(f"Expected a 2D label slice; got shape {local.shape}.")
        matches = {} if self._prev is None else match_instances(self._prev, local, self.iou_threshold)
        ids = np.unique(local)
        ids = ids[ids != 0]
        lut_from, lut_to = [0], [0]
        for i in ids:
            lut_from.append(int(i))
            if int(i) in matches:
                lut_to.append(matches[int(i)])
            else:
                lut_to.append(self.next_id)
                self.next_id += 1
        order = np.argsort(lut_from)
        keys, vals = np.asarray(lut_from)[order], np.asarray(lut_to, dtype=np.int64)[order]
        out = vals[np.searchsorted(keys, local)]
        if self.next_id > np.iinfo(np.int32).max:
            raise OverflowError("More than 2**31 - 1 objects; the int32 output cannot hold them.")
        out = out.astype(np.int32)
        self._prev = out
        return out


def link_slices(slices: Iterable[np.ndarray], iou_threshold: float = 0.3) -> Iterator[np.ndarray]:
    """Yield the linked (H, W) int32 slice for each slice-local label slice, in order."""
    linker = StackLinker(iou_threshold)
    for s in slices:
        yield linker.link(s)


def link_stack(stack: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """(Z, H, W) slice-local labels -> (Z, H, W) int32 3D labels."""
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise InvalidImageError(f"Expected a (Z, H, W) label stack; got shape {stack.shape}.")
    out = np.zeros(stack.shape, dtype=np.int32)
    for z, s in enumerate(link_slices(stack, iou_threshold)):
        out[z] = s
    return out
