"""The instance decoder's training loss: dice on the foreground and on the two distance maps.

micro-sam trains its decoders with torch_em's dice-based distance loss; this is the
same recipe written here:

- channel 0 (foreground probability): soft dice against the foreground target;
- channels 1 and 2 (centre and boundary distance): soft dice against their targets,
  both prediction and target multiplied by the true foreground first, so the
  distance maps are only learnt inside objects (outside, channel 0 decides);
- the loss is the sum of the three dice losses. Dice here is
  ``1 - 2 sum(p t) / (sum(p^2) + sum(t^2))`` over the batch and all pixels, per channel.

Targets come from :func:`napari_sam.training.instance_targets.instance_targets`.
"""

from __future__ import annotations

import numpy as np
import torch

from .instance_targets import instance_targets

_EPS = 1e-7


def dice_per_channel(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss of (B, C, H, W) ``pred`` against ``target`` per channel, summed over batch and pixels: (C,)."""
    p = pred.transpose(0, 1).flatten(1)
    t = target.transpose(0, 1).flatten(1)
    score = 2 * (p * t).sum(1) / ((p * p).sum(1) + (t * t).sum(1)).clamp(min=_EPS)
    return 1 - score


def instance_map_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The decoder loss (module docstring).

    Args:
        pred: (B, 3, H, W) float maps after the sigmoid (foreground, centre, boundary distance).
        target: (B, 3, H, W) float targets of the same layout.

    Returns:
        A scalar: foreground dice + masked centre-distance dice + masked boundary-distance dice.
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"pred and target must both be (B, 3, H, W); got {tuple(pred.shape)}, {tuple(target.shape)}.")
    fg = target[:, :1]
    masked_pred = torch.cat([pred[:, :1], pred[:, 1:] * fg], dim=1)
    masked_target = torch.cat([fg, target[:, 1:] * fg], dim=1)
    return dice_per_channel(masked_pred, masked_target).sum()


def targets_for(labels: list[np.ndarray], img_size: int, min_size: int = 0) -> torch.Tensor:
    """(B, 3, S, S) float32 targets of (h, w) label images in the padded S x S input frame (padding is background)."""
    out = []
    for lab in labels:
        padded = np.zeros((img_size, img_size), np.int64)
        padded[: lab.shape[0], : lab.shape[1]] = lab
        out.append(torch.from_numpy(instance_targets(padded, min_size=min_size)))
    return torch.stack(out)


def instance_step_loss(decoder: torch.nn.Module, embeddings: torch.Tensor, labels: list[np.ndarray],
                       img_size: int) -> torch.Tensor:
    """Decoder loss of one step: (B, C, h, w) embeddings of B images with their (h', w') labels.

    The decoder's maps are resized to the S x S input frame when its output has another size.
    """
    maps = decoder(embeddings).float()
    if maps.shape[-2:] != (img_size, img_size):
        maps = torch.nn.functional.interpolate(maps, (img_size, img_size), mode="bilinear", align_corners=False)
    return instance_map_loss(maps, targets_for(labels, img_size).to(maps.device))


__all__ = ["dice_per_channel", "instance_map_loss", "instance_step_loss", "targets_for"]
