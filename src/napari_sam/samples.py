"""Sample data for napari's File > Open Sample menu (numpy / scikit-image only, no napari import).

Each ``*_sample`` function returns a list of napari LayerData tuples ``(data, kwargs, layer_type)``.
The synthetic generators are usable on their own and return the ground truth they drew.
"""

from __future__ import annotations

import numpy as np


def synthetic_cells(shape: tuple[int, int] = (256, 256), n_cells: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like 2D image of touching nuclei and its instance labels.

    Returns:
        image: (H, W) uint16, blurred ellipses with Poisson noise on a dim background.
        labels: (H, W) int32, 0 background, 1..n one id per nucleus (later ones drawn on top).
    """
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    brightness = np.zeros(shape, np.float64)
    radius = max(6.0, min(h, w) / 14)
    for i in range(1, n_cells + 1):
        r, c = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
        rr, cc = ellipse(r, c, radius * rng.uniform(0.7, 1.2), radius * rng.uniform(0.6, 1.0), shape,
                         rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = i
        brightness[rr, cc] = rng.uniform(0.6, 1.0)
    img = gaussian(brightness, 1.5) * 2500 + gaussian(labels > 0, 4) * 300 + 120
    img = rng.poisson(img).astype(np.uint16)
    return img, labels


def synthetic_stack(shape: tuple[int, int, int] = (16, 192, 192), n_cells: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 3D (Z, Y, X) stack of ellipsoidal nuclei and its instance labels.

    Returns:
        image: (Z, Y, X) uint16.  labels: (Z, Y, X) int32.
    """
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    z, h, w = shape
    zz, yy, xx = np.mgrid[:z, :h, :w]
    labels = np.zeros(shape, np.int32)
    rad = max(5.0, min(h, w) / 12)
    for i in range(1, n_cells + 1):
        cz, cy, cx = rng.uniform(0.3 * z, 0.7 * z), rng.uniform(rad, h - rad), rng.uniform(rad, w - rad)
        rz, ry, rx = max(2.0, z / 4) * rng.uniform(0.8, 1.2), rad * rng.uniform(0.7, 1.2), rad * rng.uniform(0.7, 1.2)
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[inside] = i
    img = gaussian((labels > 0).astype(float), (0.8, 1.5, 1.5)) * 2000 + 100
    img = rng.poisson(img).astype(np.uint16)
    return img, labels


def cells_sample():
    """Synthetic 2D fluorescence nuclei (image and ground-truth labels)."""
    img, labels = synthetic_cells()
    return [
        (img, {"name": "synthetic cells", "colormap": "gray"}, "image"),
        (labels, {"name": "synthetic cells truth", "visible": False}, "labels"),
    ]


def stack_sample():
    """Synthetic 3D stack of nuclei (image and ground-truth labels)."""
    img, labels = synthetic_stack()
    return [
        (img, {"name": "synthetic stack", "colormap": "gray"}, "image"),
        (labels, {"name": "synthetic stack truth", "visible": False}, "labels"),
    ]


def skimage_cell_sample():
    """scikit-image's bundled ``data.cell``: a real 660 x 550 light microscopy image (offline)."""
    from skimage import data

    return [(data.cell(), {"name": "cell (scikit-image)", "colormap": "gray"}, "image")]


def skimage_cells3d_sample():
    """scikit-image's ``data.cells3d`` (downloaded on first use): nuclei channel of a 3D fluorescence stack."""
    from skimage import data

    try:
        stack = data.cells3d()  # (Z, C, Y, X)
    except Exception as e:  # offline, proxy, missing pooch...: say what happened and what to do
        raise OSError(
            "scikit-image's 'cells3d' sample is downloaded on first use and could not be fetched "
            f"({type(e).__name__}: {e}). Connect to the internet once, or use the synthetic samples."
        ) from e
    return [(stack[:, 1], {"name": "cells3d nuclei", "colormap": "gray"}, "image")]
