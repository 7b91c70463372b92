"""``AutoSettings``: the one set of automatic-segmentation settings, checked once.

The main and propagation widgets, the batch widget, ``napari-sam segment`` and
``segment_stack`` all build one :class:`AutoSettings` and hand it on; the defaults
below are the only place they are written. ``method`` names the automatic method:
``"amg"`` (SAM's grid of point prompts, :class:`~napari_sam.engine.automatic.amg.SamAutomaticMaskGenerator`)
today; a new method adds its name to :data:`METHODS` and its own fields' checks here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral

from ...errors import InvalidParameterError
from ..prediction.tiling import check_tiling, default_halo
from .label_image import MIN_OBJECT_AREA

#: automatic methods a settings object may name.
METHODS = ("amg",)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InvalidParameterError(f"{name} must be a whole number >= 1, got {value!r}.")
    return int(value)


def _fraction(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= v <= 1.0:
        raise InvalidParameterError(f"{name} must be in [0, 1] (0 disables the filter), got {value!r}.")
    return v


def check_amg_values(points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                     min_mask_region_area) -> None:
    """The checks of the automatic mask generator's own arguments (raises :class:`InvalidParameterError`)."""
    if points_per_side is not None:
        _positive_int("points_per_side", points_per_side)
    _positive_int("points_per_batch", points_per_batch)
    _fraction("pred_iou_thresh", pred_iou_thresh)
    _fraction("stability_score_thresh", stability_score_thresh)
    if (isinstance(min_mask_region_area, bool) or not isinstance(min_mask_region_area, Integral)
            or min_mask_region_area < 0):
        raise InvalidParameterError(f"min_mask_region_area must be a whole number >= 0, got {min_mask_region_area!r}.")


@dataclass(frozen=True)
class AutoSettings:
    """How to segment a 2D slice automatically (frozen, hashable, picklable).

    Attributes:
        method: ``"amg"`` (the only method so far; see :data:`METHODS`).
        points_per_side: grid points per image side (``points_per_side**2`` prompts).
        points_per_batch: prompts decoded together (memory vs speed; same masks).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        min_mask_region_area: fill holes and drop islands smaller than this many pixels (0: off).
        tile_shape: (rows, cols) tiles for large slices, or ``None`` (the whole slice at once).
        halo: (rows, cols) context around each tile's inner region; ``None`` is
            :func:`~napari_sam.engine.prediction.tiling.default_halo` of the tile.
    """

    method: str = "amg"
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidParameterError(f"Unknown automatic method {self.method!r}; choose one of {', '.join(METHODS)}.")
        check_amg_values(self.points_per_side, self.points_per_batch, self.pred_iou_thresh,
                         self.stability_score_thresh, self.min_mask_region_area)
        set_ = object.__setattr__
        set_(self, "pred_iou_thresh", float(self.pred_iou_thresh))
        set_(self, "stability_score_thresh", float(self.stability_score_thresh))
        if self.tile_shape is None:
            if self.halo is not None:
                raise InvalidParameterError("halo is the context around tiles: give tile_shape too (or no halo).")
            return
        tile, halo = check_tiling(self.tile_shape, self.halo if self.halo is not None else default_halo(self.tile_shape))
        set_(self, "tile_shape", tile)
        set_(self, "halo", halo)

    def amg_kwargs(self) -> dict:
        """The :class:`~napari_sam.engine.automatic.amg.SamAutomaticMaskGenerator` arguments these settings fix."""
        return {"points_per_side": self.points_per_side, "points_per_batch": self.points_per_batch,
                "pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh,
                "min_mask_region_area": self.min_mask_region_area}

    def describe(self) -> dict:
        """JSON-able form (recorded in batch job metadata)."""
        d = asdict(self)
        for k in ("tile_shape", "halo"):
            d[k] = None if d[k] is None else list(d[k])
        return d


#: the defaults, for code that needs one value without building settings of its own.
DEFAULTS = AutoSettings()
#: Batch runs (``segment_stack``, ``napari-sam segment``) leave out specks by default.
BATCH_DEFAULTS = AutoSettings(min_mask_region_area=MIN_OBJECT_AREA)

__all__ = ["BATCH_DEFAULTS", "DEFAULTS", "METHODS", "AutoSettings", "check_amg_values"]
