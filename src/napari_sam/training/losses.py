"""SAM's training losses: focal + dice on mask logits (20:1), MSE on the predicted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask: logits (K, M, S, S), target (K, 1, S, S) float -> (K, M)."""
    target = target.expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(2).mean(dim=2)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: logits (K, M, S, S), target (K, 1, S, S) float -> (K, M)."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.expand_as(logits).flatten(2)
    return 1 - (2 * (p * t).sum(2) + eps) / (p.sum(2) + t.sum(2) + eps)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``20 * focal + dice`` per mask: (K, M)."""
    return FOCAL_WEIGHT * focal_loss(logits, target) + DICE_WEIGHT * dice_loss(logits, target)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded (> 0) logits (K, M, S, S) with target (K, 1, S, S): (K, M), no gradient."""
    with torch.no_grad():
        pred = logits > 0
        t = target.expand_as(logits) > 0.5
        inter = (pred & t).flatten(2).sum(2).float()
        union = (pred | t).flatten(2).sum(2).float()
        return inter / union.clamp(min=1)


def iou_prediction_loss(iou_pred: torch.Tensor, actual_iou: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted (K, M) and actual (K, M) IoU: a scalar."""
    return F.mse_loss(iou_pred, actual_iou.detach())
