"""Tile grids with a halo: pure 2D geometry for embedding large images tile by tile.

A 2D image of shape (H, W) larger than the tile shape (th, tw) is covered by a
grid of tiles. Every tile's *outer* region (the crop that is embedded) has the
tile shape exactly (clipped to the image where the image is smaller), and
neighbouring outer regions overlap by at least ``2 * halo``. Each tile also
owns an *inner* region: the inner regions partition the image, and along every
side that is not an image border the inner region stays at least ``halo``
pixels away from the edge of the outer crop. So SAM always sees at least
``halo`` pixels of context around every pixel a tile is responsible for.

Along one axis of length L with tile length t and halo h (step s = t - 2h):

- L <= t: one tile, outer = inner = [0, L);
- otherwise n = ceil((L - 2h) / s) tiles, outer starts spread evenly over
  [0, L - t], and the cut between tiles k and k+1 lies in the middle of their
  overlap (which is >= 2h wide).

All regions are half-open ``(start, stop)`` pixel ranges in image (row, col)
coordinates. Nothing here imports torch or reads pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ...errors import InvalidImageError

Range = tuple[int, int]


def _pair(value, name: str) -> tuple[int, int]:
    """(rows, cols) from an int or a 2-sequence of ints; raises InvalidImageError otherwise."""
    if np.isscalar(value):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidImageError(f"{name} must be an int or a pair (rows, cols) of ints; got {value!r}.") from None
    if (a, b) != tuple(value):
        raise InvalidImageError(f"{name} must hold whole numbers; got {value!r}.")
    return a, b


def default_halo(tile_shape) -> tuple[int, int]:
    """The halo used when none is given: one eighth of the tile along each axis."""
    rows, cols = _pair(tile_shape, "tile_shape")
    return max(0, rows // 8), max(0, cols // 8)


def check_tiling(tile_shape, halo) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate a tile shape and halo; returns them as (rows, cols) int pairs.

    Raises:
        InvalidImageError: a negative halo, a non-positive tile, or a tile not
            larger than twice the halo along an axis (no room for an inner region).
    """
    tile = _pair(tile_shape, "tile_shape")
    hal = _pair(halo, "halo")
    if min(hal) < 0:
        raise InvalidImageError(f"halo must be >= 0 along both axes; got {hal}.")
    if min(tile) <= 0:
        raise InvalidImageError(f"tile_shape must be positive along both axes; got {tile}.")
    for axis, (t, h) in enumerate(zip(tile, hal)):
        if t <= 2 * h:
            raise InvalidImageError(
                f"tile_shape {tile} must be larger than twice the halo {hal} along every axis "
                f"(axis {axis}: {t} <= 2 * {h}); use a bigger tile or a smaller halo."
            )
    return tile, hal


def axis_ranges(length: int, tile: int, halo: int) -> list[tuple[Range, Range]]:
    """(outer, inner) ranges of the tiles along one axis of ``length`` pixels."""
    if length <= tile:
        return [((0, length), (0, length))]
    step = tile - 2 * halo
    n = max(2, math.ceil((length - 2 * halo) / step))
    starts = [round(k * (length - tile) / (n - 1)) for k in range(n)]
    cuts = [0]
    for k in range(n - 1):
        overlap_start, overlap_stop = starts[k + 1], starts[k] + tile
        cuts.append(overlap_start + (overlap_stop - overlap_start) // 2)
    cuts.append(length)
    return [((s, s + tile), (cuts[k], cuts[k + 1])) for k, s in enumerate(starts)]


@dataclass(frozen=True)
class Tile:
    """One tile: grid ``index`` (row, col) and its regions in image coordinates.

    Attributes:
        index: (grid_row, grid_col).
        outer: ((row0, row1), (col0, col1)) of the crop that is embedded.
        inner: ((row0, row1), (col0, col1)) of the pixels this tile is responsible for.
    """

    index: tuple[int, int]
    outer: tuple[Range, Range]
    inner: tuple[Range, Range]

    @property
    def origin(self) -> tuple[int, int]:
        """(row, col) of the crop's top-left pixel in the image."""
        return self.outer[0][0], self.outer[1][0]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the crop."""
        return self.outer[0][1] - self.outer[0][0], self.outer[1][1] - self.outer[1][0]

    @property
    def outer_slices(self) -> tuple[slice, slice]:
        return slice(*self.outer[0]), slice(*self.outer[1])

    @property
    def inner_slices(self) -> tuple[slice, slice]:
        return slice(*self.inner[0]), slice(*self.inner[1])

    @property
    def inner_in_crop(self) -> tuple[slice, slice]:
        """The inner region as slices of the crop."""
        r0, c0 = self.origin
        return slice(self.inner[0][0] - r0, self.inner[0][1] - r0), slice(self.inner[1][0] - c0, self.inner[1][1] - c0)


class TileGrid:
    """The tiles covering a (H, W) image; see the module docstring for the rule.

    Args:
        image_shape: (H, W).
        tile_shape: (rows, cols) of a tile's outer crop (or one int for both).
        halo: (rows, cols) of context kept around each inner region (or one int).
    """

    def __init__(self, image_shape, tile_shape, halo=0) -> None:
        h, w = _pair(image_shape, "image_shape")
        if h <= 0 or w <= 0:
            raise InvalidImageError(f"image_shape must be positive; got {(h, w)}.")
        self.image_shape = (h, w)
        self.tile_shape, self.halo = check_tiling(tile_shape, halo)
        self._rows = axis_ranges(h, self.tile_shape[0], self.halo[0])
        self._cols = axis_ranges(w, self.tile_shape[1], self.halo[1])
        self.tiles: list[Tile] = [
            Tile((i, j), (ro, co), (ri, ci))
            for i, (ro, ri) in enumerate(self._rows)
            for j, (co, ci) in enumerate(self._cols)
        ]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(tile rows, tile cols)."""
        return len(self._rows), len(self._cols)

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def flat_index(self, index: tuple[int, int]) -> int:
        return index[0] * self.grid_shape[1] + index[1]

    def describe(self) -> dict:
        """JSON-friendly description (shapes and the outer/inner ranges of every tile)."""
        return {
            "image_shape": list(self.image_shape),
            "tile_shape": list(self.tile_shape),
            "halo": list(self.halo),
            "grid_shape": list(self.grid_shape),
            "rows": [[list(o), list(i)] for o, i in self._rows],
            "cols": [[list(o), list(i)] for o, i in self._cols],
        }

    # ---- prompt routing ----------------------------------------------------------------------
    def _margins(self, tile: Tile, lo: np.ndarray, hi: np.ndarray) -> list[float]:
        """Per axis, the smallest distance from the prompt extent [lo, hi] (row, col) to a crop
        edge that is not an image border (inf when both edges are image borders)."""
        margins = []
        for ax in range(2):
            start, stop = tile.outer[ax]
            m = math.inf
            if start > 0:
                m = min(m, lo[ax] - (start - 0.5))
            if stop < self.image_shape[ax]:
                m = min(m, (stop - 0.5) - hi[ax])
            margins.append(m)
        return margins

    def best_tile(self, extent: tuple[np.ndarray, np.ndarray]) -> Tile | None:
        """The tile that answers a prompt whose (row, col) extent is ``extent = (lo, hi)``.

        A tile qualifies when its crop contains the whole extent and, along each axis,
        the extent keeps at least that axis's ``halo`` from every crop edge that is not
        an image border (true whenever the tile's inner region contains the extent).
        Among those the one with the largest smallest margin wins. ``None`` when no
        single tile qualifies (the prompt spans tiles).
        """
        lo, hi = (np.asarray(v, dtype=np.float64) for v in extent)
        best, best_margin = None, -math.inf
        for tile in self.tiles:
            inside = all(tile.outer[ax][0] - 0.5 <= lo[ax] and hi[ax] <= tile.outer[ax][1] - 0.5 for ax in range(2))
            if not inside:
                continue
            margins = self._margins(tile, lo, hi)
            if any(m < h for m, h in zip(margins, self.halo)):
                continue
            if min(margins) > best_margin:
                best, best_margin = tile, min(margins)
        return best

    def tiles_touching(self, extent: tuple[np.ndarray, np.ndarray]) -> list[Tile]:
        """Tiles whose inner region overlaps the (row, col) extent [lo, hi].

        Coordinates are continuous with pixel centres at integers, so a region of
        pixels [a, b) spans [a - 0.5, b - 0.5] (as in :mod:`napari_sam.engine.prediction.prompts`).
        """
        lo, hi = (np.asarray(v, dtype=np.float64) for v in extent)
        out = []
        for tile in self.tiles:
            if all(tile.inner[ax][0] - 0.5 < hi[ax] and lo[ax] < tile.inner[ax][1] - 0.5 for ax in range(2)):
                out.append(tile)
        return out

    def tile_containing(self, point) -> Tile:
        """The tile whose inner region holds the (row, col) ``point`` (clamped into the image)."""
        r = min(max(math.floor(float(point[0]) + 0.5), 0), self.image_shape[0] - 1)
        c = min(max(math.floor(float(point[1]) + 0.5), 0), self.image_shape[1] - 1)
        i = next(k for k, (_, (a, b)) in enumerate(self._rows) if a <= r < b)
        j = next(k for k, (_, (a, b)) in enumerate(self._cols) if a <= c < b)
        return self.tiles[i * self.grid_shape[1] + j]
