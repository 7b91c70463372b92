"""Greedy box non-maximum suppression in plain numpy/torch (no torchvision).

torchvision's compiled ops pull in ``torch._dynamo`` and triton on import; inside napari, once the
OpenGL context exists, that import can kill the process (triton's LLVM against the GL driver's).
This module keeps the same boxes, in the same order, as ``torchvision.ops.batched_nms`` (its CPU
kernel: scores sorted descending with ties kept in index order; IoU computed in the boxes' float
type as ``inter / (area_i + area_j - inter)``; a box is dropped when that IoU is strictly above the
threshold), which the tests check against torchvision itself.
"""

from __future__ import annotations

import numpy as np
import torch


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, done independently per category.

    Args:
        boxes: (N, 4) float, (x0, y0, x1, y1) per box.
        scores: (N,) float, higher first.
        idxs: (N,) int category of each box; boxes of different categories never suppress each other.
        iou_threshold: a box whose IoU with a kept, higher-scoring box of its category is above this is dropped.

    Returns:
        (K,) int64 indices into ``boxes``, by decreasing score (ties: lower index first), on ``boxes.device``.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4); got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,) or idxs.shape != (n,):
        raise ValueError(f"scores and idxs must have shape ({n},); got {tuple(scores.shape)} and {tuple(idxs.shape)}")
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    ftype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    order = torch.sort(scores.detach().to("cpu", ftype), descending=True, stable=True).indices.numpy()
    b = boxes.detach().to("cpu", ftype).numpy()[order]
    cat = idxs.detach().cpu().numpy()[order]
    x0, y0, x1, y1 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x1 - x0) * (y1 - y0)
    thr = float(iou_threshold)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            keep.append(i)
            if i + 1 == n:
                break
            rest = slice(i + 1, n)
            w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
            h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            # compare in double, as the reference does (the threshold is a double there)
            suppressed[rest] |= (iou.astype(np.float64) > thr) & (cat[rest] == cat[i])
    return torch.from_numpy(order[np.asarray(keep, dtype=np.int64)].astype(np.int64)).to(device)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`batched_nms` with every box in one category (what ``torchvision.ops.nms`` keeps)."""
    return batched_nms(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.int64), iou_threshold)
