"""Per-model automatic-segmentation defaults: the thresholds that suit each zoo model.

A zoo entry's ``automatic`` holds (setting, value) pairs named like the fields of
:class:`~napari_sam.engine.automatic.settings.AutoSettings`; they are used wherever the
user leaves a threshold at ``None`` (:meth:`AutoSettings.resolved`), and the user's
values always win. A model without values of its own gets
:data:`~napari_sam.engine.automatic.settings.FALLBACK` (SAM's grid-prompt thresholds,
micro-sam's decoder post-processing).

Where the values come from:

- micro-sam's light- and electron-microscopy models: micro-sam's annotator settings
  (``micro_sam/_model_settings.py``, ``AIS_SETTINGS`` and ``AMG_SETTINGS``, commit d261492 of
  computational-cell-analytics/micro-sam): centre/boundary distance thresholds, distance
  smoothing and minimum size for the decoder; predicted-IoU and stability thresholds for
  grid prompting.
- the bundled ``tiny``: grid-prompt thresholds 0.7 / 0.8, measured on four held-out synthetic
  nuclei images (256 x 256, ``nuclei_sample((777, k))``, 32 x 32 prompts, minimum area 64):
  F1 at IoU 0.5 of 0.26 with SAM's 0.88 / 0.95, 0.63 with 0.7 / 0.8, 0.63 with 0.5 / 0.6,
  0.60 with 0.3 / 0.4. Decoder values, once ``tiny`` has a decoder, belong with the weights
  trained for it.

This module is data only: the zoo reads it; :mod:`.model_profile` answers per model.
"""

from __future__ import annotations


#: (centre distance, boundary distance, distance smoothing) for micro-sam's decoders (minimum size 100).
_MICRO_SAM_AIS = {
    "vit_t_lm": (0.5, 0.5, 2.0), "vit_b_lm": (0.4, 0.5, 2.0), "vit_l_lm": (0.4, 0.4, 1.6),
    "vit_t_em_organelles": (0.4, 0.5, 1.2), "vit_b_em_organelles": (0.3, 0.4, 1.2),
    "vit_l_em_organelles": (0.3, 0.4, 1.2),
}
#: (predicted IoU, stability) for micro-sam's models' grid prompting.
_MICRO_SAM_AMG = {
    "vit_t_lm": (0.6, 0.65), "vit_b_lm": (0.65, 0.7), "vit_l_lm": (0.65, 0.73),
    "vit_t_em_organelles": (0.75, 0.75), "vit_b_em_organelles": (0.75, 0.75), "vit_l_em_organelles": (0.8, 0.8),
}
_TINY = (("pred_iou_thresh", 0.7), ("stability_score_thresh", 0.8))

#: the line shown when the bundled model is in use (widgets' status, ``napari-sam segment``).
TINY_NOTE = ("Bundled model 'tiny' in use: small, trained on synthetic fluorescence only; for real data "
             "choose 'vit_b_lm' (light microscopy; once downloaded it becomes the default) or 'vit_b_em_organelles' (electron microscopy).")


def zoo_defaults(name: str) -> tuple[tuple[str, float], ...]:
    """The (setting, value) pairs the zoo entry called ``name`` carries (see the module docstring)."""
    if name == "tiny":
        return _TINY
    out: list[tuple[str, float]] = []
    if name in _MICRO_SAM_AMG:
        iou, stability = _MICRO_SAM_AMG[name]
        out += [("pred_iou_thresh", iou), ("stability_score_thresh", stability)]
    if name in _MICRO_SAM_AIS:
        c, b, smooth = _MICRO_SAM_AIS[name]
        out += [("center_distance_threshold", c), ("boundary_distance_threshold", b),
                ("distance_smoothing", smooth), ("min_size", 100)]
    return tuple(out)


__all__ = ["TINY_NOTE", "zoo_defaults"]
