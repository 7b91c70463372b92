"""``ImageSlices``: an (..., H, W[, C]) array seen as a set of 2D slices.

It answers the questions every slice-by-slice consumer asks of the image
(which axes are slice axes, how a slice index maps to a key and to a flat
slice number, how to read a slice or one tile's crop of it, and which
intensity limits normalise the whole image) without reading more of a lazy
(dask / zarr) array than asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InvalidImageError, InvalidPromptError
from .normalize import check_dtype, intensity_range, needs_limits
from ..prediction.tiling import Tile

FULL_SLICE_SAMPLE_PIXELS = 4_000_000  # above this many pixels per slice, intensity limits use windows

SliceIndex = int | Sequence[int] | None


def level0(image: Any) -> Any:
    """napari multiscale data (a list/tuple of arrays, largest first) -> the full-resolution array."""
    if isinstance(image, (list, tuple)) and image and all(hasattr(a, "shape") for a in image):
        return image[0]
    return image


def guess_rgb(shape: Sequence[int]) -> bool:
    """Whether the last axis of an array of ``shape`` is read as colour channels when nobody says:
    a >= 3D array whose last axis has length 3 or 4 and whose next-to-last (the width) is longer."""
    shape = tuple(shape)
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


class ImageSlices:
    """A checked (..., H, W) or (..., H, W, C) array and its 2D slices.

    Args:
        image: numpy, dask or zarr array, or napari multiscale data (its first level).
        rgb: whether the last axis holds colour channels; ``None`` guesses
            (last axis of length 3 or 4 on a >= 3D array).
    """

    def __init__(self, image: Any, rgb: bool | None = None) -> None:
        image = level0(image)
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) < 2:
            raise InvalidImageError(f"Image of shape {shape} has fewer than 2 dimensions; expected at least (H, W).")
        if 0 in shape:
            raise InvalidImageError(f"Image of shape {shape} is empty.")
        check_dtype(image.dtype)
        if rgb is None:
            rgb = guess_rgb(shape)
        if rgb and shape[-1] not in (3, 4):
            raise InvalidImageError(f"rgb=True but the last axis has length {shape[-1]} (expected 3 or 4).")
        if rgb and len(shape) < 3:
            raise InvalidImageError(f"rgb=True needs (..., H, W, C) data; got shape {shape}.")
        self.array = image
        self.is_rgb = bool(rgb)
        self._limits: tuple[float, float] | None = None

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(H, W) of one 2D slice."""
        shape = self.array.shape
        return tuple(shape[-3:-1]) if self.is_rgb else tuple(shape[-2:])

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the non-spatial (slice) axes, e.g. (Z,) for a z-stack, () for 2D."""
        shape = self.array.shape
        return tuple(shape[:-3]) if self.is_rgb else tuple(shape[:-2])

    @property
    def n_slices(self) -> int:
        lead = self.leading_shape
        return int(np.prod(lead)) if lead else 1

    def key(self, slice_index: SliceIndex) -> tuple[int, ...]:
        """The checked index tuple of one slice; ``None`` is allowed only when there is one slice."""
        lead = self.leading_shape
        if slice_index is None:
            if self.n_slices > 1:
                raise InvalidPromptError(
                    f"The image has slice axes of shape {lead}; pass slice_index= to say which 2D slice."
                )
            return tuple(0 for _ in lead)
        key = (int(slice_index),) if np.isscalar(slice_index) else tuple(int(i) for i in slice_index)
        if len(key) != len(lead) or any(not 0 <= k < n for k, n in zip(key, lead)):
            raise InvalidPromptError(f"slice_index {slice_index} is not valid for slice axes of shape {lead}.")
        return key

    def flat(self, key: tuple[int, ...]) -> int:
        """Slice key -> flat slice number (C order over the slice axes)."""
        return int(np.ravel_multi_index(key, self.leading_shape)) if key else 0

    def unflat(self, flat: int) -> tuple[int, ...]:
        """Inverse of :meth:`flat`."""
        lead = self.leading_shape
        return tuple(int(k) for k in np.unravel_index(flat, lead)) if lead else ()

    def intensity_limits(self) -> tuple[float, float] | None:
        """(low, high) normalisation limits for the whole image (None for uint8 and bool), computed once."""
        if not needs_limits(self.array.dtype):
            return None
        if self._limits is None:
            self._limits = intensity_range(self._sample_for_limits())
        return self._limits

    def _sample_for_limits(self, max_slices: int = 8) -> np.ndarray:
        """Pixels for the intensity limits: up to ``max_slices`` slices; big slices by 16 windows each."""
        n = self.n_slices
        picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).astype(int))
        h, w = self.spatial_shape
        if h * w <= FULL_SLICE_SAMPLE_PIXELS:
            windows = [(slice(None), slice(None))]
        else:
            size = 256
            rows = np.linspace(0, max(0, h - size), 4).astype(int)
            cols = np.linspace(0, max(0, w - size), 4).astype(int)
            windows = [(slice(r, r + size), slice(c, c + size)) for r in rows for c in cols]
        parts = []
        for i in picks:
            key = self.unflat(int(i))
            parts.extend(np.asarray(self.array[key + win]).reshape(-1) for win in windows)
        return np.concatenate(parts)

    def read_slice(self, key: tuple[int, ...]) -> np.ndarray:
        """The 2D slice (H, W) or (H, W, C) at a checked ``key`` as a numpy array."""
        return np.asarray(self.array[key] if key else self.array)

    def read_tile(self, key: tuple[int, ...], tile: Tile) -> np.ndarray:
        """The crop of ``tile`` (rows, cols[, C]) of the slice at ``key``; reads only that region."""
        return np.asarray(self.array[key + tile.outer_slices])


__all__ = ["FULL_SLICE_SAMPLE_PIXELS", "ImageSlices", "guess_rgb", "level0"]
