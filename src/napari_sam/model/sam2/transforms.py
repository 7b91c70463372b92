"""SAM 2's input transform: any-size RGB to a square, normalised model input, and coordinates to it.

SAM 2 resizes the whole image to S x S (no padding, aspect ratio not kept), so a point
(x, y) of an (H, W) image maps to (x * S / W, y * S / H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to_square(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) float in [0, 1], bilinear with antialiasing.

    This is what Meta's image predictor does (torchvision ``ToTensor`` + ``Resize``).
    """
    x = rgb.permute(2, 0, 1).float().div(255.0)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def coords_to_input(coords: torch.Tensor, orig_hw: tuple[int, int], size: int, normalize: bool = True) -> torch.Tensor:
    """(..., 2) (x, y) pixel coordinates of an (H, W) image (or in [0, 1] if not ``normalize``) -> input pixels."""
    if normalize:
        h, w = orig_hw
        coords = coords / torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
    return coords * size
