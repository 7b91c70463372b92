"""Instance labels from the instance decoder's three maps: seeded watershed.

The decoder (:mod:`napari_sam.model.instance_decoder`) predicts, per pixel, a
foreground probability, a normalised distance to the object centre and an
(inverted) distance to the object boundary. micro-sam turns them into instances
as follows (``InstanceSegmentationWithDecoder.generate`` and torch_em's
``watershed_from_center_and_boundary_distances``), and so does
:func:`labels_from_maps`:

1. smooth the foreground map (Gaussian, ``foreground_smoothing``) and both
   distance maps (``distance_smoothing``);
2. foreground = smoothed foreground > ``foreground_threshold``;
3. seeds = connected components (8-connectivity) of the foreground pixels where
   centre distance < ``center_distance_threshold`` and boundary distance <
   ``boundary_distance_threshold``;
4. seeded watershed of the smoothed boundary-distance map inside the foreground
   (4-connected flooding); foreground pixels no seed reaches stay background;
5. objects smaller than ``min_size`` pixels are removed and the ids renumbered 1..n.

Differences from micro-sam's implementation (bioimage-cpp kernels), all measured
in ``tests/test_instance_maps.py``:

- Gaussian smoothing: scipy's ``gaussian_filter`` with the same kernel radius
  (ceil(3 sigma)) and mirrored borders; equal to bioimage-cpp's within 2e-7.
- Watershed: scikit-image's, which floods in exact float order; bioimage-cpp
  first quantises heights to 65,536 levels and leaves the order within a level
  unspecified. Pixels whose heights tie after quantisation (a handful, on object
  borders) can go to the other neighbouring object; object count and seeds are
  identical.
- Labels are int32 (micro-sam: uint64) and are always consecutive (micro-sam
  renumbers only when ``min_size > 0``; its ids are consecutive anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import InvalidParameterError

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class InstanceMapSettings:
    """Post-processing settings; the defaults are micro-sam's (``InstanceSegmentationWithDecoder.generate``).

    Attributes:
        center_distance_threshold: seeds need a centre distance below this (0..1).
        boundary_distance_threshold: seeds need a boundary distance below this (0..1).
        foreground_threshold: foreground needs a (smoothed) probability above this (0..1).
        foreground_smoothing: Gaussian sigma (pixels) for the foreground map; 0 = none.
        distance_smoothing: Gaussian sigma (pixels) for both distance maps; 0 = none.
        min_size: objects with fewer pixels are removed.
    """

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0

    def __post_init__(self) -> None:
        for name in ("center_distance_threshold", "boundary_distance_threshold", "foreground_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise InvalidParameterError(f"{name} must be a number between 0 and 1, got {v!r}.")
        for name in ("foreground_smoothing", "distance_smoothing"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InvalidParameterError(f"{name} must be a Gaussian sigma >= 0 (pixels), got {v!r}.")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise InvalidParameterError(f"min_size must be a whole number of pixels >= 0, got {self.min_size!r}.")


def recommended_settings(model_name: str | None) -> InstanceMapSettings:
    """The post-processing that suits zoo model ``model_name``'s decoder (its zoo entry's
    ``automatic`` values, e.g. micro-sam's for its light- and electron-microscopy models), else the defaults."""
    from dataclasses import fields

    from ..models.zoo import REGISTRY

    entry = REGISTRY.get(model_name) if model_name else None
    names = {f.name for f in fields(InstanceMapSettings)}
    own = {k: v for k, v in (entry.automatic if entry is not None else ()) if k in names}
    return InstanceMapSettings(**own)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing as vigra / bioimage-cpp do it: radius ceil(3 sigma), mirrored borders; float32."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode="mirror", radius=int(math.ceil(3.0 * sigma)))


def _check_maps(foreground: np.ndarray, center: np.ndarray, boundary: np.ndarray) -> None:
    shapes = {np.shape(foreground), np.shape(center), np.shape(boundary)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InvalidParameterError(
            f"The three decoder maps must be 2D arrays of one shape; got {np.shape(foreground)}, "
            f"{np.shape(center)}, {np.shape(boundary)}."
        )
    for name, m in (("foreground", foreground), ("centre distance", center), ("boundary distance", boundary)):
        if not np.isfinite(m).all():
            raise InvalidParameterError(f"The {name} map holds NaN or infinite values.")


def seeds_and_mask(
    foreground: np.ndarray, center: np.ndarray, boundary: np.ndarray, settings: InstanceMapSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-3 of the module docstring: (seed labels int32, foreground mask bool, smoothed boundary map)."""
    from scipy import ndimage

    fg = smooth(foreground, settings.foreground_smoothing) > settings.foreground_threshold
    center = smooth(center, settings.distance_smoothing)
    boundary = smooth(boundary, settings.distance_smoothing)
    seed_mask = (center < settings.center_distance_threshold) & (boundary < settings.boundary_distance_threshold) & fg
    seeds, _ = ndimage.label(seed_mask, structure=_EIGHT, output=np.int32)
    return seeds, fg, boundary


def labels_from_maps(
    foreground: np.ndarray,
    center: np.ndarray,
    boundary: np.ndarray,
    settings: InstanceMapSettings = InstanceMapSettings(),
) -> np.ndarray:
    """The instance label image of three (H, W) decoder maps (see module docstring).

    Args:
        foreground, center, boundary: (H, W) float maps in [0, 1] (rows, columns).
        settings: thresholds, smoothing and minimum size.

    Returns:
        (H, W) int32 labels: 0 background, objects 1..n.
    """
    from skimage.segmentation import watershed

    _check_maps(foreground, center, boundary)
    seeds, fg, height = seeds_and_mask(foreground, center, boundary, settings)
    if not seeds.any():
        return np.zeros(fg.shape, np.int32)
    labels = watershed(height, markers=seeds, mask=fg, connectivity=1).astype(np.int32, copy=False)
    return remove_small_objects(labels, settings.min_size)


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects of fewer than ``min_size`` pixels and renumber the rest 1..n in their order."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    new_ids = np.zeros(sizes.size, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]


__all__ = ["InstanceMapSettings", "labels_from_maps", "recommended_settings", "remove_small_objects", "seeds_and_mask", "smooth"]
