"""How well a model segments objects from one prompt: mean IoU of a centre click and of a tight box.

Uses :class:`napari_sam.engine.prediction.predictor.SamPredictor` exactly as the plugin
does, so the numbers describe what a user gets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .datasets import check_pair


@dataclass
class EvalResult:
    """Mean IoUs over all evaluated objects.

    ``click_iou``: one positive click at the object's centre, the mask with the
    highest predicted IoU of the three (what the plugin shows);
    ``click_best_iou``: the best of the three (an upper bound);
    ``box_iou``: the tight bounding box, single-mask output.
    """

    n_images: int
    n_objects: int
    click_iou: float
    click_best_iou: float
    box_iou: float
    per_object: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("per_object")
        return d


def centre_point(mask: np.ndarray) -> tuple[int, int]:
    """The (row, col) inside ``mask`` (H, W) bool farthest from its border (the centroid may lie outside)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float x0, y0, x1, y1 of ``mask`` (H, W) bool, inclusive pixel indices."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate_prompts(model, pairs, max_objects_per_image: int | None = None, min_pixels: int = 16) -> EvalResult:
    """Evaluate ``model`` (a ``Sam``) on ``pairs`` of (image, labels).

    Objects smaller than ``min_pixels`` are skipped (a click cannot be placed meaningfully).
    """
    from ..engine.prediction.predictor import SamPredictor
    from ..model.transforms import rowcol_to_xy

    predictor = SamPredictor(model)
    rows = []
    n_images = 0
    for i in range(len(pairs)):
        image, labels = check_pair(*pairs[i], name=f"pair {i}")
        predictor.set_image(image)
        n_images += 1
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        ids = ids[counts >= min_pixels]
        if max_objects_per_image is not None:
            ids = ids[:max_objects_per_image]
        for obj in ids:
            gt = labels == obj
            point = rowcol_to_xy(np.array([centre_point(gt)], dtype=float))
            masks, scores, _ = predictor.predict(point, np.array([1]), multimask_output=True)
            ious = [iou(m, gt) for m in masks]
            box_mask, _, _ = predictor.predict(box=tight_box(gt), multimask_output=False)
            rows.append({"image": i, "label": int(obj), "area": int(gt.sum()),
                         "click_iou": ious[int(np.argmax(scores))], "click_best_iou": max(ious),
                         "box_iou": iou(box_mask[0], gt)})
    if not rows:
        return EvalResult(n_images, 0, float("nan"), float("nan"), float("nan"), [])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("click_iou", "click_best_iou", "box_iou")}
    return EvalResult(n_images, len(rows), **mean, per_object=rows)
