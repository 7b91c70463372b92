"""Mask records of automatic segmentation: a batched container, boxes and RLE.

Coordinates follow the reference ``segment_anything`` output format: boxes are
(x0, y0, x1, y1) pixel indices, *inclusive* (x = column, y = row), and
run-length encodings ("uncompressed RLE", as used by COCO) run down the
columns: the mask is flattened in Fortran (column-major) order and ``counts``
alternates runs of 0 and 1, starting with a (possibly empty) run of 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class MaskRecords:
    """Parallel per-mask fields (torch tensors, numpy arrays or lists) of equal length.

    Typical fields: ``boxes`` (N, 4) int64 xyxy inclusive, ``iou_preds`` (N,) float32,
    ``points`` (N, 2) float64 (x, y), ``stability_score`` (N,) float32,
    ``crop_boxes`` (N, 4) int64 xyxy (exclusive end), ``masks`` list of N box-local
    (h_i, w_i) bool arrays (the mask inside its box).
    """

    def __init__(self, **fields: Any) -> None:
        self._fields: dict[str, Any] = {}
        for k, v in fields.items():
            self[k] = v

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, (list, np.ndarray, torch.Tensor)):
            raise TypeError(f"MaskRecords field {key!r} must be a list, numpy array or tensor, got {type(value)}.")
        self._fields[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __delitem__(self, key: str) -> None:
        del self._fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def keys(self) -> Iterator[str]:
        return iter(self._fields)

    def filter(self, keep: torch.Tensor | np.ndarray) -> None:
        """Keep the records selected by a bool mask or an index array (indices give the new order)."""
        keep_t = torch.as_tensor(keep)
        idx = keep_t.nonzero()[:, 0] if keep_t.dtype == torch.bool else keep_t.long()
        idx_np = idx.cpu().numpy()
        for k, v in self._fields.items():
            if isinstance(v, torch.Tensor):
                self._fields[k] = v[idx.to(v.device)]
            elif isinstance(v, np.ndarray):
                self._fields[k] = v[idx_np]
            else:
                self._fields[k] = [v[i] for i in idx_np]

    def cat(self, other: MaskRecords) -> None:
        """Append ``other``'s records (fields missing here are taken from ``other``)."""
        if len(other) == 0 and len(self) > 0:
            return
        if len(self) == 0 and not self._fields:
            self._fields = dict(other._fields)
            return
        for k, v in other._fields.items():
            if k not in self._fields:
                self._fields[k] = v
            elif isinstance(v, torch.Tensor):
                self._fields[k] = torch.cat([self._fields[k], v.to(self._fields[k].device)], dim=0)
            elif isinstance(v, np.ndarray):
                self._fields[k] = np.concatenate([self._fields[k], v], axis=0)
            else:
                self._fields[k] = list(self._fields[k]) + list(v)


# ---- boxes --------------------------------------------------------------------------------------
def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive xyxy boxes of (N, H, W) bool masks -> (N, 4) int64; an empty mask gives zeros."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, ar_h, -1).amax(dim=1)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    right = torch.where(cols, ar_w, -1).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    out = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    out[empty] = 0
    return out


def box_xyxy_to_xywh(box: np.ndarray | torch.Tensor | list) -> list:
    """(x0, y0, x1, y1) -> [x0, y0, x1 - x0, y1 - y0] as a Python list."""
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: crop-frame boxes (N, 4) that touch a crop edge which is not an image edge."""
    crop_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    full = (boxes + torch.as_tensor([crop_box[0], crop_box[1]] * 2, device=boxes.device)).float()
    near_crop = torch.isclose(full, crop_t[None], atol=atol, rtol=0)
    near_image = torch.isclose(full, orig_t[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


# ---- box-local masks ----------------------------------------------------------------------------
def masks_to_local(masks: torch.Tensor, boxes: torch.Tensor) -> list[np.ndarray]:
    """Cut each (H, W) bool mask to its inclusive box: N arrays (y1-y0+1, x1-x0+1) bool."""
    out = []
    b = boxes.cpu().tolist()
    for m, (x0, y0, x1, y1) in zip(masks, b):
        out.append(m[y0 : y1 + 1, x0 : x1 + 1].cpu().numpy().copy())
    return out


def local_to_full(local: np.ndarray, box: np.ndarray | list, shape: tuple[int, int]) -> np.ndarray:
    """Paste a box-local bool mask into an all-False (H, W) bool array at box (x0, y0, ...)."""
    full = np.zeros(shape, dtype=bool)
    x0, y0 = int(box[0]), int(box[1])
    full[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
    return full


# ---- run-length encoding ------------------------------------------------------------------------
def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed RLE of an (H, W) bool mask: {"size": [H, W], "counts": [int, ...]}."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [h * w]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode an uncompressed RLE into an (H, W) bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h * w} for size {[h, w]}.")
    return flat.reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))
