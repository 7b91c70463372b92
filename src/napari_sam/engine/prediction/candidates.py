"""``CandidateMasks``: the (M, H, W) candidate masks of one prediction, each upscaled when first read.

A click shows one candidate; upscaling the others to full size would be wasted work
unless the user cycles to them. ``CandidateMasks`` holds a function that upscales
candidate ``k`` and keeps each result once made; the masks are the very arrays the
eager path gives (the same upscaling function runs on the same logits).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class CandidateMasks:
    """A read-only, lazily filled stack of M bool masks of shape (H, W).

    ``masks[k]`` (an int) upscales candidate ``k`` on first use; ``np.asarray(masks)``
    gives the whole (M, H, W) bool stack. ``shape``, ``dtype``, ``ndim`` and ``len()``
    answer without upscaling anything.
    """

    def __init__(self, count: int, shape: tuple[int, int], make: Callable[[int], np.ndarray]) -> None:
        self._count = int(count)
        self._hw = (int(shape[0]), int(shape[1]))
        self._make = make
        self._done: dict[int, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._count, *self._hw)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(bool)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            k = int(index)
            if not -self._count <= k < self._count:
                raise IndexError(f"candidate {k} out of range for {self._count} candidates")
            k %= self._count
            if k not in self._done:
                mask = self._make(k)
                mask.flags.writeable = False
                self._done[k] = mask
            return self._done[k]
        return np.asarray(self)[index]

    def __array__(self, dtype=None, copy=None):
        out = np.stack([self[k] for k in range(self._count)]) if self._count else np.zeros(self.shape, bool)
        return out if dtype is None else out.astype(dtype)

    @property
    def computed(self) -> tuple[int, ...]:
        """The candidates upscaled so far."""
        return tuple(sorted(self._done))

    def placed(self, image_shape: tuple[int, int], region: tuple[slice, slice]) -> CandidateMasks:
        """These masks (of a tile's crop) placed at ``region`` of an all-False (H, W) ``image_shape`` slice."""

        def make(k: int) -> np.ndarray:
            full = np.zeros(image_shape, dtype=bool)
            full[region] = self[k]
            return full

        return CandidateMasks(self._count, image_shape, make)


__all__ = ["CandidateMasks"]
