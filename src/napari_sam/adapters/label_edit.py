"""Picking a committed object back up for correction: its mask and the matching mask prompt."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidPromptError
from . import labels_io
from .mask_prompt import mask_to_logits


class LabelEdit(NamedTuple):
    """An object being corrected (a tuple: ``edit[2]`` is the mask, as before).

    Attributes:
        label_id: its id in the target Labels layer.  key: its slice index (() for 2D).
        mask: (H, W) bool, the committed object on that slice.
        logits: (1, h, w) float32 mask prompt, or None when the object spans tiles.
        tile: the tile index the logits belong to on a tiled slice, or None.
    """

    label_id: int
    key: tuple[int, ...]
    mask: np.ndarray
    logits: np.ndarray | None
    tile: tuple[int, ...] | None


def mask_prompt(segmenter: Any, mask: np.ndarray) -> tuple[np.ndarray | None, tuple[int, ...] | None]:
    """(logits (1, h, w) or None, tile index or None) to use ``mask`` (H, W) bool as a mask prompt.

    On a tiled slice the logits are those of the tile holding the whole object; an object
    spanning tiles gets no mask prompt (corrections then come from clicks alone).
    """
    predictor = segmenter.predictor  # SAM 1 or SAM 2.1: the geometry of its encoder input
    grid = getattr(segmenter, "tile_grid", None)
    tile = None
    if grid is not None and len(grid) > 1:
        rows, cols = np.nonzero(mask)
        chosen = grid.best_tile((np.array([rows.min(), cols.min()]), np.array([rows.max(), cols.max()])))
        if chosen is None:
            return None, None
        mask, tile = mask[chosen.outer_slices], tuple(chosen.index)
    return mask_to_logits(mask, predictor.encoder_size, predictor.mask_input_size,
                          resized_hw=predictor.resized_size(mask.shape)), tile


def pick_up(segmenter: Any, target: Any, image_layer: Any, key: tuple[int, ...], label_id: int) -> LabelEdit:
    """The :class:`LabelEdit` of object ``label_id`` on slice ``key`` of the ``target`` Labels layer.

    Raises :class:`~napari_sam.errors.InvalidImageError` for a target not matching the image, and
    :class:`~napari_sam.errors.InvalidPromptError` when the label is not on that slice.
    """
    labels_io.check_target(target, image_layer)
    plane = np.asarray(target.data[key] if key else target.data)
    mask = plane == int(label_id)
    if not mask.any():
        raise InvalidPromptError(f"Label {label_id} is not on the displayed slice of {target.name!r}.")
    logits, tile = mask_prompt(segmenter, mask)
    return LabelEdit(int(label_id), key, mask, logits, tile)


def predict_prompts(segmenter: Any, prompts: Any, key: tuple[int, ...], edit: LabelEdit | None) -> Any:
    """The segmenter's :class:`~napari_sam.engine.prediction.tiled_prediction.Prediction` for one slice's prompts.

    ``prompts`` is a :class:`~napari_sam.adapters.prompt_layers.SlicePrompts`. While ``edit``
    corrects a committed object, its mask prompt (and tile) goes with the clicks and a single
    mask is asked for; otherwise a lone prompt gets the three ambiguous candidates.
    """
    has_points = len(prompts.points) > 0
    extra = {}
    if edit is not None and edit.logits is not None:
        extra["mask_input"] = edit.logits
        if edit.tile is not None:
            extra["tile"] = edit.tile
    n_prompts = len(prompts.points) + (prompts.box is not None)
    return segmenter.predict(
        points=prompts.points if has_points else None,
        labels=prompts.labels if has_points else None,
        box=prompts.box,
        slice_index=key or None,
        multimask=n_prompts == 1 and edit is None,
        lazy=True,
        **extra,
    )
