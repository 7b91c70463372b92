"""Training targets of the instance decoder: the three maps it learns to predict from labels.

The same targets micro-sam trains its decoders on (torch_em's
``PerObjectDistanceTransform(distances=True, boundary_distances=True,
directed_distances=False, foreground=True)``, which micro-sam's training
utilities apply to the instance labels):

- channel 0, foreground: 1 inside objects, 0 outside;
- channel 1, centre distance: per object, the Euclidean distance of each pixel to
  the object's centre (its centroid rounded to a pixel; where that falls outside
  the object, the pixel farthest from the object's boundary), divided by the
  object's largest such distance: 0 at the centre, 1 at the farthest pixel;
- channel 2, boundary distance: per object, (largest distance to a boundary pixel)
  minus (this pixel's distance to the nearest boundary pixel), divided by its
  maximum: 0 deep inside, 1 on the boundary.

Both distance channels are 1 outside objects. Objects are the connected pieces of
each label (8-connectivity); pieces smaller than ``min_size`` pixels are dropped.
Boundary pixels are scikit-image's ``find_boundaries(mode="inner")`` of the whole
label image, so a pixel next to a touching neighbour counts as boundary.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def _pieces(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Connected pieces of equal labels, 1..N (raster order), small pieces removed."""
    from skimage.measure import label

    pieces = label(labels, connectivity=labels.ndim).astype(np.int32)
    if min_size > 0:
        sizes = np.bincount(pieces.ravel())
        small = sizes < min_size
        small[0] = False
        pieces[small[pieces]] = 0
        ids = np.zeros(sizes.size, np.int32)
        keep = np.flatnonzero((sizes >= min_size) & (np.arange(sizes.size) > 0))
        ids[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
        pieces = ids[pieces]
    return pieces


def instance_targets(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """The decoder's targets for ``labels``.

    Args:
        labels: (H, W) integer instance labels, 0 = background.
        min_size: pieces of fewer pixels become background.

    Returns:
        (3, H, W) float32: foreground, centre distance, boundary distance (module docstring).
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2D integer array, got {labels.dtype} {labels.shape}.")
    pieces = _pieces(labels, min_size)
    boundaries = find_boundaries(pieces, mode="inner")
    out = np.ones((3, *labels.shape), np.float32)
    out[0] = pieces > 0
    for idx, sl in enumerate(ndimage.find_objects(pieces), start=1):
        if sl is None:
            continue
        mask = pieces[sl] == idx
        to_boundary = ndimage.distance_transform_edt(~boundaries[sl])
        to_boundary[~mask] = 0
        deepest = np.unravel_index(np.argmax(to_boundary), mask.shape)
        # the centroid rounded in image coordinates (round-half-to-even depends on the offset)
        centroid = np.mean(np.nonzero(mask), axis=1) + [sl[0].start, sl[1].start]
        centre = tuple(int(v) - s.start for v, s in zip(np.round(centroid), sl))
        if not mask[centre]:
            centre = deepest
        rows, cols = np.indices(mask.shape)
        to_centre = np.hypot(rows - centre[0], cols - centre[1])
        to_centre[~mask] = 0
        inner = to_boundary[deepest] - to_boundary
        inner[~mask] = 0
        out[1][sl][mask] = (to_centre / (to_centre.max() + _EPS))[mask]
        out[2][sl][mask] = (inner / (np.abs(inner).max() + _EPS))[mask]
    return out


__all__ = ["instance_targets"]
