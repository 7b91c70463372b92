"""Prompts drawn from ground-truth masks, as in SAM's training recipe.

All masks here are in the model's input frame: (K, S, S) with S the encoder's
input size; coordinates are SAM's (x, y) pixel indices in that frame (the
prompt encoder adds the half-pixel offset itself).
"""

from __future__ import annotations

import torch


def sample_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One point per mask, uniformly among its pixels: (K, S, S) bool -> (K, 2) float (x, y).

    Rows of ``masks`` must not be empty.
    """
    k, h, w = masks.shape
    weights = masks.reshape(k, -1).float()
    idx = torch.multinomial(weights, 1, generator=generator)[:, 0]
    return torch.stack([(idx % w).float(), torch.div(idx, w, rounding_mode="floor").float()], dim=1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of non-empty (K, S, S) bool masks: (K, 4) float x0, y0, x1, y1 (inclusive pixel indices)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    s_r, s_c = torch.arange(masks.shape[1]), torch.arange(masks.shape[2])
    big = max(masks.shape[1:])
    y0 = torch.where(rows, s_r, big).min(dim=1).values
    y1 = torch.where(rows, s_r, -1).max(dim=1).values
    x0 = torch.where(cols, s_c, big).min(dim=1).values
    x1 = torch.where(cols, s_c, -1).max(dim=1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def noisy_boxes(
    masks: torch.Tensor, noise: float = 0.1, max_shift: float = 5.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Tight boxes with each side moved by Gaussian noise of ``noise`` times the box side, at most ``max_shift`` px."""
    boxes = mask_boxes(masks)
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1) + 1
    shift = torch.randn(boxes.shape, generator=generator) * noise * side
    boxes = boxes + shift.clamp(-max_shift, max_shift)
    size = masks.shape[-1] - 1
    boxes = boxes.clamp(0, size)
    x0, x1 = torch.minimum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = torch.minimum(boxes[:, 1], boxes[:, 3]), torch.maximum(boxes[:, 1], boxes[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def correction_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click of a simulated user: a point in the error region of each prediction.

    Args:
        pred, gt: (K, S, S) bool predicted and true masks.
    Returns:
        points (K, 2) float (x, y) and labels (K,) int: 1 (positive) where the point
        lies in a missed part of the object, 0 (negative) in a false-positive part.
        Where a prediction is already perfect, a positive point inside the object.
    """
    error = pred ^ gt
    none = ~error.flatten(1).any(dim=1)
    error = torch.where(none[:, None, None], gt, error)
    pts = sample_points(error, generator)
    xi, yi = pts[:, 0].long(), pts[:, 1].long()
    labels = gt[torch.arange(gt.shape[0]), yi, xi].int()
    return pts, labels
