"""Answering prompts on a tiled slice: routing, splitting across tiles, merging.

A large slice is embedded tile by tile (:mod:`napari_sam.engine.prediction.tiling`): each
tile's crop is embedded on its own. A prompt is answered by the single tile
that holds it (:meth:`TileGrid.best_tile`) when there is one: the result is
exactly what embedding that crop alone would give, placed back into the slice.
A prompt that spans tiles (a box over a tile border, positive points in
different tiles) is predicted in every tile whose inner region meets the
extent of the positive points and the box; each such tile gets the points that
lie inside its crop (halo included) and the box clipped to its crop, and is
skipped when that leaves it no positive point and no box. The parts are merged
into one object: candidate ``k`` of the result is the union over tiles of each
tile's candidate ``k`` restricted to that tile's inner region; its score is the
mean of the tiles' scores weighted by those parts' areas. Such merged
predictions have ``logits=None`` and ``tile=None`` (there is no single low-res
frame to feed back); single-tile predictions return the tile's low-res logits
and its grid index in ``Prediction.tile``; pass both back (``mask_input=``,
``tile=``) to refine.

Everything here is pure geometry over a :class:`TileGrid` plus a
:class:`TilePredictFn` that predicts inside one tile's crop (the
:class:`~napari_sam.engine.prediction.segmenter.Segmenter` supplies one that sets that
tile's embedding on its predictor). Slice prompts are validated napari
(row, col) arrays: points (N, 2) float64, labels (N,) int64 in {0, 1}, box
(4,) (row0, col0, row1, col1); the callable receives them in SAM's (x, y)
order relative to the crop, flipped by :func:`~napari_sam.model.transforms.rowcol_to_xy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ...errors import InvalidPromptError
from ...model.transforms import rowcol_to_xy
from .candidates import CandidateMasks
from .predictor import Embedding
from .tiling import Tile, TileGrid

Extent = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt set on one 2D slice.

    Attributes:
        masks: (M, H, W) bool candidate masks of the whole slice (M = 3 with multimask, else 1):
            a numpy array, or :class:`~napari_sam.engine.prediction.candidates.CandidateMasks`
            (each candidate made when first indexed) from ``Segmenter.predict(lazy=True)``.
        scores: (M,) float predicted IoU of each candidate.
        logits: (M, h, w) float32 low-resolution logits (feed one back as ``mask_input``);
            for a tiled slice these are in the frame of tile ``tile``, and ``None``
            when the prediction was merged from several tiles.
        tile: (grid_row, grid_col) of the tile that answered, ``None`` for merged predictions.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None
    tile: tuple[int, int] | None = None

    @property
    def best(self) -> int:
        """Index of the best-scored candidate."""
        return int(np.argmax(self.scores))

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[self.best]


@dataclass(frozen=True)
class TiledEmbedding:
    """The embeddings of all tiles of one slice.

    Attributes:
        grid: the slice's :class:`TileGrid`.
        tiles: one :class:`Embedding` per tile, in ``grid.tiles`` order.
    """

    grid: TileGrid
    tiles: tuple[Embedding, ...]


class TilePredictFn(Protocol):
    """Predict inside one tile's crop, like :meth:`SamPredictor.predict` on that crop's embedding.

    Args:
        tile: the tile whose embedding answers.
        point_coords: (N, 2) float (x, y) in the crop's pixel frame, or None.
        point_labels: (N,) int64, or None.
        box: (4,) float x0, y0, x1, y1 in the crop's pixel frame, or None.
        mask_input: (1, h, w) or (h, w) low-res logits of this tile, or None.
        multimask_output: three candidates (True) or one.
    Returns:
        masks (M, th, tw) bool of the crop, scores (M,), low-res logits (M, h, w).
    """

    def __call__(
        self, tile: Tile, *, point_coords, point_labels, box, mask_input, multimask_output: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def points_in_crop(points: np.ndarray, tile: Tile) -> np.ndarray:
    """(N,) bool: which (row, col) points lie in the tile's crop (pixel extents, centres at integers)."""
    (r0, r1), (c0, c1) = tile.outer
    return (
        (points[:, 0] >= r0 - 0.5) & (points[:, 0] <= r1 - 0.5)
        & (points[:, 1] >= c0 - 0.5) & (points[:, 1] <= c1 - 0.5)
    )


def box_meets_crop(box: np.ndarray, tile: Tile) -> bool:
    """Whether a (row0, col0, row1, col1) box overlaps the tile's crop."""
    (r0, r1), (c0, c1) = tile.outer
    return bool(box[0] <= r1 - 0.5 and box[2] >= r0 - 0.5 and box[1] <= c1 - 0.5 and box[3] >= c0 - 0.5)


def object_extent(points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None) -> Extent | None:
    """(lo, hi) (row, col) extent of the positive points and the box, or None when there are neither."""
    parts = []
    if points is not None and (labels == 1).any():
        parts.append(points[labels == 1])
    if box is not None:
        parts.append(box.reshape(2, 2))
    if not parts:
        return None
    allp = np.concatenate(parts)
    return allp.min(axis=0), allp.max(axis=0)


def prompts_in_tile(
    tile: Tile, points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Slice (row, col) prompts -> the tile crop's (x, y) prompts for :class:`TilePredictFn`.

    Keeps the points inside the crop (None when none is), moves them and the box
    into the crop's frame and clips the box to the crop's pixel extent.

    Returns:
        (point_coords (K, 2) xy or None, point_labels (K,) or None, box (4,) xy or None).
    """
    r0, c0 = tile.origin
    th, tw = tile.shape
    coords = tile_labels = xy_box = None
    if points is not None:
        inside = points_in_crop(points, tile)
        if inside.any():
            coords = rowcol_to_xy(points[inside] - (r0, c0))
            tile_labels = labels[inside]
    if box is not None:
        b = np.clip(box - (r0, c0, r0, c0), -0.5, (th - 0.5, tw - 0.5, th - 0.5, tw - 0.5))
        xy_box = rowcol_to_xy(b.reshape(2, 2)).reshape(4)
    return coords, tile_labels, xy_box


def _predict_crop(predict: TilePredictFn, tile: Tile, points, labels, box, mask_input, multimask: bool):
    coords, tile_labels, xy_box = prompts_in_tile(tile, points, labels, box)
    return predict(
        tile, point_coords=coords, point_labels=tile_labels, box=xy_box, mask_input=mask_input,
        multimask_output=multimask,
    )


def route(
    grid: TileGrid,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    tile: tuple[int, int] | None = None,
) -> tuple[Tile | None, Extent | None]:
    """Which tile answers: ``(tile, None)``, or ``(None, extent)`` when the prompts span tiles.

    A single-tile grid always answers with its tile; an explicit grid ``tile`` index
    is checked and used; otherwise :meth:`TileGrid.best_tile` of the positive points'
    and box's extent.

    Raises:
        InvalidPromptError: ``tile`` outside the grid, or a tiled slice without a
            positive point, a box or ``tile``.
    """
    if len(grid) == 1:
        return grid.tiles[0], None
    if tile is not None:
        idx = tuple(int(i) for i in tile)
        if not (0 <= idx[0] < grid.grid_shape[0] and 0 <= idx[1] < grid.grid_shape[1]):
            raise InvalidPromptError(f"tile {tile} is not in the tile grid of shape {grid.grid_shape}.")
        return grid.tiles[grid.flat_index(idx)], None
    extent = object_extent(points, labels, box)
    if extent is None:
        raise InvalidPromptError(
            "On a tiled image give at least one positive point or a box (or tile= with mask_input)."
        )
    chosen = grid.best_tile(extent)
    return chosen, None if chosen is not None else extent


def predict_in_tile(
    grid: TileGrid, tile: Tile, predict: TilePredictFn, points, labels, box, mask_input, multimask: bool
) -> Prediction:
    """Predict in one tile and place its (M, th, tw) masks into (M, H, W) slice masks (tiled grids only)."""
    masks, scores, logits = _predict_crop(predict, tile, points, labels, box, mask_input, multimask)
    if len(grid) > 1 and isinstance(masks, CandidateMasks):
        masks = masks.placed(grid.image_shape, tile.outer_slices)
    elif len(grid) > 1:
        full = np.zeros((masks.shape[0], *grid.image_shape), dtype=masks.dtype)
        full[(slice(None), *tile.outer_slices)] = masks
        masks = full
    return Prediction(masks, scores, logits, tile.index)


def predict_merged(
    grid: TileGrid, extent: Extent, predict: TilePredictFn, points, labels, box, multimask: bool
) -> Prediction:
    """Predict in every tile the prompts reach and merge the parts (see the module docstring)."""
    masks_out = scores_sum = area_sum = plain_sum = None
    n_tiles = 0
    for tile in grid.tiles_touching(extent):
        has_pos = points is not None and bool(((labels == 1) & points_in_crop(points, tile)).any())
        has_box = box is not None and box_meets_crop(box, tile)
        if not (has_pos or has_box):
            continue
        masks, scores, _ = _predict_crop(predict, tile, points, labels, box if has_box else None, None, multimask)
        masks = np.asarray(masks)
        if masks_out is None:
            masks_out = np.zeros((masks.shape[0], *grid.image_shape), dtype=bool)
            scores_sum = np.zeros(masks.shape[0], np.float64)
            area_sum = np.zeros(masks.shape[0], np.float64)
            plain_sum = np.zeros(masks.shape[0], np.float64)
        part = masks[(slice(None), *tile.inner_in_crop)]
        masks_out[(slice(None), *tile.inner_slices)] = part
        area = part.reshape(part.shape[0], -1).sum(axis=1).astype(np.float64)
        scores_sum += area * scores
        area_sum += area
        plain_sum += scores
        n_tiles += 1
    if masks_out is None:  # pragma: no cover - the extent always touches a tile holding a prompt
        raise InvalidPromptError("The prompts fall in no tile of the image.")
    merged = np.where(area_sum > 0, scores_sum / np.maximum(area_sum, 1), plain_sum / n_tiles)
    return Prediction(masks_out, merged.astype(np.float32), None, None)


def predict_tiled(
    grid: TileGrid,
    predict: TilePredictFn,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    multimask: bool,
    tile: tuple[int, int] | None = None,
) -> Prediction:
    """Answer validated slice prompts on ``grid``: routed to one tile, or split and merged.

    Raises:
        InvalidPromptError: see :func:`route`; and ``mask_input`` with prompts that span tiles.
    """
    chosen, extent = route(grid, points, labels, box, tile)
    if chosen is not None:
        return predict_in_tile(grid, chosen, predict, points, labels, box, mask_input, multimask)
    if mask_input is not None:
        raise InvalidPromptError(
            "mask_input can only refine a prediction inside one tile, but these prompts span "
            "several tiles; leave out mask_input (merged predictions have no logits)."
        )
    return predict_merged(grid, extent, predict, points, labels, box, multimask)


__all__ = [
    "Prediction",
    "TiledEmbedding",
    "TilePredictFn",
    "box_meets_crop",
    "object_extent",
    "points_in_crop",
    "predict_in_tile",
    "predict_merged",
    "predict_tiled",
    "prompts_in_tile",
    "route",
]
