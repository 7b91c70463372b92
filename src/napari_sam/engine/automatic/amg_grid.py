"""Point grids and crop boxes for automatic mask generation.

Point grids are (N, 2) float64 (x, y) in [0, 1], scaled later by a crop's
(width, height). Crop boxes are [x0, y0, x1, y1] ints with exclusive ends.
Both follow the reference ``segment_anything`` layout exactly (same points,
same crops), so results can be compared one to one.
"""

from __future__ import annotations

import math

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 (x, y) cell centres of an n x n grid over [0, 1]^2, x fastest."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    ys, xs = np.meshgrid(side, side, indexing="ij")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of all layers and the layer index of each.

    Layer 0 is the whole image; layer i >= 1 has (2**i)**2 overlapping crops,
    overlapping by ``overlap_ratio * short_side * 2 / 2**i`` pixels.

    Args:
        im_size: (H, W) of the image.
    Returns:
        boxes [[x0, y0, x1, y1], ...] (ends exclusive) and their layer indices.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i_layer in range(n_layers):
        n_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w = int(math.ceil((overlap * (n_side - 1) + im_w) / n_side))
        crop_h = int(math.ceil((overlap * (n_side - 1) + im_h) / n_side))
        x0s = [int((crop_w - overlap) * i) for i in range(n_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(i_layer + 1)
    return boxes, layers
