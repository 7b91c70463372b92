"""``AutoSettings``: the one set of automatic-segmentation settings, checked once.

The main and propagation widgets, the batch widget, ``napari-sam segment`` and
``segment_stack`` all build one :class:`AutoSettings` and hand it on; the defaults
below are the only place they are written.

``method`` names the automatic method (:data:`METHODS`):

- ``"ais"``: the model's trained instance decoder (micro-sam's automatic instance
  segmentation): one decoder pass per image, then a seeded watershed
  (:mod:`napari_sam.engine.automatic.instance_decoder`);
- ``"amg"``: SAM's grid of point prompts
  (:class:`~napari_sam.engine.automatic.amg.SamAutomaticMaskGenerator`), which works with every model;
- ``None`` (default): ``"ais"`` when the model has a decoder, else ``"amg"``.

Thresholds left at ``None`` mean "the model's": the values its zoo entry carries
(:mod:`napari_sam.engine.models.auto_defaults`), else :data:`FALLBACK`. :meth:`AutoSettings.resolved`
fills them in (and the method) for one model; a batch run records the resolved settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real

from ...errors import InvalidParameterError, NoDecoderError
from ..prediction.tiling import check_tiling, default_halo
from .label_image import MIN_OBJECT_AREA

#: automatic methods a settings object may name (None: the decoder when the model has one).
METHODS = ("ais", "amg")

#: the values used for a threshold left at None when the model's zoo entry has none of its own:
#: SAM's for grid prompting, micro-sam's ``InstanceSegmentationWithDecoder.generate`` for the decoder.
FALLBACK: dict[str, float | int] = {
    "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
    "center_distance_threshold": 0.5, "boundary_distance_threshold": 0.5, "foreground_threshold": 0.5,
    "distance_smoothing": 1.6, "min_size": 0,
}
#: the fields that may be left at None ("the model's"), and the method each belongs to.
MODEL_TUNED = {"pred_iou_thresh": "amg", "stability_score_thresh": "amg", "center_distance_threshold": "ais",
               "boundary_distance_threshold": "ais", "foreground_threshold": "ais", "distance_smoothing": "ais",
               "min_size": "ais"}


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


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise InvalidParameterError(f"{name} must be a whole number >= 0, got {value!r}.")
    return int(value)


def check_amg_values(points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                     min_mask_region_area) -> None:
    """The checks of the automatic mask generator's own arguments (raises :class:`InvalidParameterError`)."""
    if points_per_side is not None:
        _positive_int("points_per_side", points_per_side)
    _positive_int("points_per_batch", points_per_batch)
    _fraction("pred_iou_thresh", pred_iou_thresh)
    _fraction("stability_score_thresh", stability_score_thresh)
    _count("min_mask_region_area", min_mask_region_area)


def _checked(name: str, value):
    """A model-tuned field's checked value (None stays None)."""
    if value is None:
        return None
    if name == "min_size":
        return _count(name, value)
    if name == "distance_smoothing":
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < float("inf"):
            raise InvalidParameterError(f"distance_smoothing must be a Gaussian sigma >= 0 (pixels), got {value!r}.")
        return float(value)
    return _fraction(name, value)


@dataclass(frozen=True)
class AutoSettings:
    """How to segment a 2D slice automatically (frozen, hashable, picklable).

    Attributes:
        method: ``"ais"`` (the model's instance decoder), ``"amg"`` (grid prompts) or ``None``
            (the decoder when the model has one, else grid prompts).
        points_per_side: grid points per image side (``points_per_side**2`` prompts; amg).
        points_per_batch: prompts decoded together (memory vs speed; same masks; amg).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables; amg).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables; amg).
        min_mask_region_area: fill holes and drop islands smaller than this many pixels (0: off; amg).
        center_distance_threshold, boundary_distance_threshold: seeds need centre and boundary
            distances below these (ais).
        foreground_threshold: foreground needs a probability above this (ais).
        distance_smoothing: Gaussian sigma (pixels) of the distance maps (ais).
        min_size: objects with fewer pixels are removed (ais).
        tile_shape: (rows, cols) tiles for large slices, or ``None`` (the whole slice at once).
        halo: (rows, cols) context around each tile's inner region; ``None`` is
            :func:`~napari_sam.engine.prediction.tiling.default_halo` of the tile.

    Every threshold left at ``None`` is the model's (see the module docstring).
    """

    method: str | None = None
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    min_mask_region_area: int = 0
    center_distance_threshold: float | None = None
    boundary_distance_threshold: float | None = None
    foreground_threshold: float | None = None
    distance_smoothing: float | None = None
    min_size: int | None = None
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise InvalidParameterError(
                f"Unknown automatic method {self.method!r}; choose one of {', '.join(METHODS)} "
                "(or leave it out: the decoder when the model has one, else grid prompts).")
        _positive_int("points_per_side", self.points_per_side)
        _positive_int("points_per_batch", self.points_per_batch)
        _count("min_mask_region_area", self.min_mask_region_area)
        set_ = object.__setattr__
        for name in MODEL_TUNED:
            set_(self, name, _checked(name, getattr(self, name)))
        if self.tile_shape is None:
            if self.halo is not None:
                raise InvalidParameterError("halo is the context around tiles: give tile_shape too (or no halo).")
            return
        tile, halo = check_tiling(self.tile_shape, self.halo if self.halo is not None else default_halo(self.tile_shape))
        set_(self, "tile_shape", tile)
        set_(self, "halo", halo)

    @property
    def is_resolved(self) -> bool:
        """True when the method and every threshold are set (see :meth:`resolved`)."""
        return self.method is not None and all(getattr(self, k) is not None for k in MODEL_TUNED)

    def resolved(self, has_decoder: bool, model_defaults: Mapping[str, float] | None = None,
                 model_name: str | None = None) -> AutoSettings:
        """These settings for one model: the method chosen and every ``None`` threshold filled in.

        Args:
            has_decoder: whether the model carries a trained instance decoder.
            model_defaults: the model's own values (its zoo entry's), by field name.
            model_name: named in the error when ``"ais"`` is asked of a model without a decoder.

        Raises:
            NoDecoderError: ``method="ais"`` and the model has no decoder (names the models with one).
        """
        method = self.method or ("ais" if has_decoder else "amg")
        if method == "ais" and not has_decoder:
            raise no_decoder_error(model_name)
        own = dict(model_defaults or {})
        filled = {k: own.get(k, FALLBACK[k]) for k in MODEL_TUNED if getattr(self, k) is None}
        return replace(self, method=method, **filled)

    def _require_resolved(self, method: str) -> None:
        if not self.is_resolved or self.method != method:
            raise InvalidParameterError(
                f"These settings are not resolved for {method!r} (method={self.method!r}); "
                "call settings.resolved(...) for the model first.")

    def amg_kwargs(self) -> dict:
        """The :class:`~napari_sam.engine.automatic.amg.SamAutomaticMaskGenerator` arguments these
        (resolved, ``method="amg"``) settings fix."""
        self._require_resolved("amg")
        return {"points_per_side": self.points_per_side, "points_per_batch": self.points_per_batch,
                "pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh,
                "min_mask_region_area": self.min_mask_region_area}

    def instance_map_settings(self):
        """The :class:`~napari_sam.engine.automatic.instance_maps.InstanceMapSettings` these
        (resolved, ``method="ais"``) settings fix."""
        from .instance_maps import InstanceMapSettings

        self._require_resolved("ais")
        return InstanceMapSettings(
            center_distance_threshold=self.center_distance_threshold,
            boundary_distance_threshold=self.boundary_distance_threshold,
            foreground_threshold=self.foreground_threshold, distance_smoothing=self.distance_smoothing,
            min_size=self.min_size)

    def describe(self) -> dict:
        """JSON-able form (recorded in batch job metadata): the method and the fields it uses."""
        d = asdict(self)
        for k in ("tile_shape", "halo"):
            d[k] = None if d[k] is None else list(d[k])
        if self.method == "ais":
            for k in ("points_per_side", "points_per_batch", "min_mask_region_area"):
                d.pop(k)
        unused = {k for k, m in MODEL_TUNED.items() if self.method is not None and m != self.method}
        return {k: v for k, v in d.items() if k not in unused}


def no_decoder_error(model_name: str | None) -> NoDecoderError:
    """The error for ``method="ais"`` on a model without a decoder, naming the zoo models that have one."""
    from ..models.zoo import decoder_models

    name = repr(model_name) if model_name else "this model"
    return NoDecoderError(
        f"The model {name} has no instance decoder, so it cannot segment automatically with one "
        f"(method 'ais'). Models with a decoder: {', '.join(decoder_models())} (`napari-sam models` lists "
        "them); or use method 'amg' (grid prompts), which works with every model.")


#: the defaults, for code that needs one value without building settings of its own.
DEFAULTS = AutoSettings()
#: Batch runs (``segment_stack``, ``napari-sam segment``) leave out specks by default.
BATCH_DEFAULTS = AutoSettings(min_mask_region_area=MIN_OBJECT_AREA)

__all__ = ["BATCH_DEFAULTS", "DEFAULTS", "FALLBACK", "METHODS", "MODEL_TUNED", "AutoSettings", "check_amg_values",
           "no_decoder_error"]
