"""3D propagation: carry objects segmented on one slice through a z-stack.

An object given as a 2D mask on one slice (its *seed*) is segmented on the
neighbouring slice with prompts made from the previous slice's result, then on
the next one, and so on in both directions until the object ends:

- **prompts** for slice ``z +/- 1`` (:func:`prompt_from_mask`): the bounding box of
  the previous mask (grown by ``box_margin`` of its size so a growing object
  is not cut), ``n_points`` positive points inside it (the maximum of the
  distance transform, then farthest-point picks among the deep interior
  pixels), and the previous slice's low-resolution logits as ``mask_input``
  when the predictor returned them.
- **stop criteria** (:class:`StopCriteria`), checked on each new slice's mask;
  the first one that fails ends the object in that direction and that slice
  is *not* written:

  ``min_score``      predicted IoU below this (default 0.5);
  ``min_area``       fewer pixels than this (default 5; an empty mask always stops);
  ``min_area_ratio`` area below this fraction of the previous slice's (default 0.2);
  ``max_area_ratio`` area above this multiple of the previous slice's (default 4, a leak);
  ``min_overlap``    IoU with the previous slice's mask below this (default 0.2).

Several objects propagate in one run: each sweep (upwards, then downwards)
visits every slice once and predicts all objects active on it, so each slice
embedding is computed at most twice. Every object keeps its own label id.

Re-propagating after a correction: give the corrected mask as the seed on
slice ``k`` together with the existing label volume (``labels=``). For that id
only, its voxels on slice ``k`` and on every slice beyond ``k`` in the
propagated direction(s) are replaced by the new result (removed where the new
propagation stops earlier); voxels of other ids are never overwritten, and
the new mask is written only on background or on its own id.

:func:`propagate` is a progress generator: it yields a :class:`PropagationStep`
(a :class:`~napari_sam.engine.progress.Progress`) after each slice and returns
the (Z, H, W) label volume. Closing it (cancel) keeps what was written: the
volume is filled in place and every step carries it as ``step.labels``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from ...errors import InvalidImageError, InvalidPromptError
from ..progress import Progress, run_blocking


@dataclass(frozen=True)
class SlicePrompt:
    """Prompts for one 2D slice, napari (row, col) order.

    Attributes:
        box: (4,) float (row0, col0, row1, col1), inclusive-exclusive pixel bounds.
        points: (N, 2) float (row, col).   point_labels: (N,) int, 1 positive / 0 negative.
        mask_input: (h, w) float32 low-resolution logits of the previous slice, or None.
    """

    box: np.ndarray
    points: np.ndarray
    point_labels: np.ndarray
    mask_input: np.ndarray | None = None


@dataclass(frozen=True)
class SlicePrediction:
    """A predictor's answer for one slice: (H, W) bool ``mask``, predicted IoU ``score``,
    and (h, w) float32 low-res ``logits`` (or None when the predictor has none)."""

    mask: np.ndarray
    score: float
    logits: np.ndarray | None = None


class SlicePredictFn(Protocol):
    def __call__(self, z: int, prompt: SlicePrompt) -> SlicePrediction: ...


@dataclass(frozen=True)
class Seed:
    """Where an object starts: its (H, W) bool ``mask`` on slice ``slice_index``."""

    slice_index: int
    mask: np.ndarray


@dataclass(frozen=True)
class StopCriteria:
    """When an object has ended (see the module docstring)."""

    min_score: float = 0.5
    min_area: int = 5
    min_area_ratio: float = 0.2
    max_area_ratio: float = 4.0
    min_overlap: float = 0.2

    def check(self, mask: np.ndarray, score: float, prev: np.ndarray) -> str | None:
        """The reason to stop (a short text), or None to go on. ``mask``/``prev``: (H, W) bool."""
        area = int(mask.sum())
        prev_area = int(prev.sum())
        if area == 0 or area < self.min_area:
            return f"area {area} < {self.min_area} px"
        if score < self.min_score:
            return f"predicted IoU {score:.2f} < {self.min_score}"
        if prev_area and area < self.min_area_ratio * prev_area:
            return f"area fell to {area / prev_area:.2f} of the previous slice's"
        if prev_area and area > self.max_area_ratio * prev_area:
            return f"area grew to {area / prev_area:.2f} x the previous slice's"
        inter = int(np.logical_and(mask, prev).sum())
        iou = inter / (area + prev_area - inter)
        if iou < self.min_overlap:
            return f"IoU {iou:.2f} with the previous slice < {self.min_overlap}"
        return None


@dataclass(frozen=True)
class PropagationStep(Progress):
    """Progress of a propagation, after one object was predicted on one slice.

    Attributes:
        label_id: the object.  z: the slice.  direction: +1 (up) or -1 (down).
        mask: (H, W) bool mask written on slice ``z`` (None when the object stopped there).
        score: predicted IoU.  stopped: the stop reason, or None.
        labels: the (Z, H, W) label volume being filled (a reference, not a copy).
    """

    label_id: int = 0
    z: int = 0
    direction: int = 1
    mask: np.ndarray | None = None
    score: float = float("nan")
    stopped: str | None = None
    labels: np.ndarray | None = field(default=None, repr=False)


def _sample_points(mask: np.ndarray, n_points: int) -> np.ndarray:
    """(n, 2) float (row, col) positive points deep inside ``mask`` (n <= n_points)."""
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    first = np.unravel_index(int(np.argmax(dist)), dist.shape)
    chosen = [np.array(first, dtype=np.float64)]
    deep = np.argwhere(dist >= 0.5 * dist.max()).astype(np.float64)
    if len(deep) > 2000:  # subsample large objects for speed (deterministic)
        deep = deep[:: len(deep) // 2000 + 1]
    far = np.full(len(deep), np.inf)
    for _ in range(1, n_points):
        far = np.minimum(far, np.linalg.norm(deep - chosen[-1], axis=1))
        i = int(np.argmax(far))
        if far[i] < 2.0:
            break
        chosen.append(deep[i])
    return np.stack(chosen)


def prompt_from_mask(
    mask: np.ndarray, logits: np.ndarray | None = None, n_points: int = 3, box_margin: float = 0.1
) -> SlicePrompt:
    """Prompts for the next slice from a (H, W) bool mask of the previous one.

    The box is the mask's bounding box grown by ``box_margin`` of its height/width
    on each side (clipped to the image).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise InvalidPromptError("Cannot make prompts from an empty mask.")
    h, w = mask.shape
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dr, dc = box_margin * (r1 - r0), box_margin * (c1 - c0)
    box = np.array([max(0.0, r0 - dr), max(0.0, c0 - dc), min(float(h), r1 + dr), min(float(w), c1 + dc)])
    pts = _sample_points(mask, n_points)
    return SlicePrompt(box, pts, np.ones(len(pts), dtype=np.int64), logits)


def segmenter_predict_fn(segmenter: Any) -> SlicePredictFn:
    """A :class:`SlicePredictFn` over a :class:`~napari_sam.engine.prediction.segmenter.Segmenter`
    whose image is the (Z, H, W) stack; single-mask output."""

    def predict(z: int, prompt: SlicePrompt) -> SlicePrediction:
        mask_input = None if prompt.mask_input is None else prompt.mask_input[None]
        pred = segmenter.predict(
            points=prompt.points, labels=prompt.point_labels, box=prompt.box,
            mask_input=mask_input, slice_index=z, multimask=False,
        )
        b = pred.best
        return SlicePrediction(pred.masks[b].astype(bool), float(pred.scores[b]), pred.logits[b])

    return predict


def seeds_from_labels(labels: np.ndarray, ids: int | list[int], slice_index: int) -> dict[int, Seed]:
    """Seeds for ``ids`` from their masks on slice ``slice_index`` of a (Z, H, W) label volume."""
    ids = [int(ids)] if np.isscalar(ids) else [int(i) for i in ids]
    if labels.ndim != 3 or not 0 <= slice_index < labels.shape[0]:
        raise InvalidPromptError(f"slice_index {slice_index} is not a slice of a label volume of shape {labels.shape}.")
    plane = np.asarray(labels[slice_index])
    seeds = {}
    for i in ids:
        m = plane == i
        if not m.any():
            raise InvalidPromptError(f"Label {i} has no pixels on slice {slice_index}; seed it on a slice where it is drawn.")
        seeds[i] = Seed(slice_index, m)
    return seeds


def _check_seeds(seeds: Mapping[int, Seed | tuple], shape: tuple[int, int, int]) -> dict[int, Seed]:
    out = {}
    if not seeds:
        raise InvalidPromptError("No seeds given: pass {label_id: Seed(slice_index, mask)}.")
    for lid, s in seeds.items():
        s = s if isinstance(s, Seed) else Seed(int(s[0]), np.asarray(s[1]))
        lid = int(lid)
        if lid <= 0:
            raise InvalidPromptError(f"Label ids must be positive integers; got {lid}.")
        if not 0 <= s.slice_index < shape[0]:
            raise InvalidPromptError(f"Seed of label {lid} is on slice {s.slice_index}, outside 0..{shape[0] - 1}.")
        m = np.asarray(s.mask).astype(bool)
        if m.shape != shape[1:]:
            raise InvalidPromptError(f"Seed mask of label {lid} has shape {m.shape}; slices are {shape[1:]}.")
        if not m.any():
            raise InvalidPromptError(f"Seed mask of label {lid} is empty.")
        out[lid] = Seed(int(s.slice_index), m)
    return out


def _write(labels: np.ndarray, z: int, lid: int, mask: np.ndarray | None) -> None:
    """Replace ``lid`` on slice ``z`` by ``mask`` (written only on background or on ``lid``)."""
    plane = labels[z]
    plane[plane == lid] = 0
    if mask is not None:
        plane[mask & (plane == 0)] = lid


def propagate(
    predict: SlicePredictFn | Any,
    seeds: Mapping[int, Seed],
    shape: tuple[int, int, int] | None = None,
    labels: np.ndarray | None = None,
    directions: tuple[int, ...] = (1, -1),
    criteria: StopCriteria = StopCriteria(),
    n_points: int = 3,
    box_margin: float = 0.1,
    use_mask_input: bool = True,
    max_slices: int | None = None,
    image: Any = None,
) -> Generator[Progress, None, np.ndarray]:
    """Propagate seeded objects through z; a progress generator returning the (Z, H, W) labels.

    Args:
        predict: a :class:`SlicePredictFn` ``(z, SlicePrompt) -> SlicePrediction`` or a
            :class:`~napari_sam.engine.prediction.segmenter.Segmenter` holding the (Z, H, W) stack.
        seeds: ``{label_id: Seed(slice_index, (H, W) bool mask)}``.
        shape: (Z, H, W); taken from ``labels`` or the segmenter's image when left out.
        labels: (Z, H, W) integer volume filled in place (existing objects are kept;
            see the module docstring for re-propagation); a new int32 volume if None.
        directions: ``(1, -1)`` both ways, ``(1,)`` towards higher z only, ``(-1,)`` lower.
        max_slices: stop each object after this many slices per direction (None: no limit).
        image: the (Z, H, W[, 3|4]) stack, needed (only) when ``predict`` is a SAM 2.1 model.
    """
    if is_sam2_model(predict):
        from .memory_propagation import propagate_seeds

        return (yield from propagate_seeds(predict, seeds, image, labels=labels, directions=directions,
                                           max_slices=max_slices))
    if hasattr(predict, "predict") and hasattr(predict, "set_image"):
        seg = predict
        if shape is None and labels is None:
            shape = (*seg.leading_shape, *seg.spatial_shape)
        predict = segmenter_predict_fn(seg)
    if labels is not None:
        if labels.ndim != 3:
            raise InvalidImageError(f"labels must be a (Z, H, W) volume; got shape {labels.shape}.")
        if shape is not None and tuple(shape) != labels.shape:
            raise InvalidImageError(f"labels have shape {labels.shape} but shape={tuple(shape)} was given.")
        shape = labels.shape
    if shape is None or len(shape) != 3:
        raise InvalidImageError(f"Propagation needs a (Z, H, W) stack; got shape {shape}.")
    if any(d not in (1, -1) for d in directions) or not directions:
        raise InvalidPromptError(f"directions must hold 1 and/or -1; got {directions}.")
    seeds = _check_seeds(seeds, tuple(shape))
    if labels is None:
        labels = np.zeros(shape, dtype=np.int32)
    n_z = shape[0]
    # Clear old voxels of each seeded id on its seed slice and beyond it in each direction.
    for lid, s in seeds.items():
        for d in directions:
            stop = n_z if d > 0 else -1
            for z in range(s.slice_index + d, stop, d):
                plane = labels[z]
                plane[plane == lid] = 0
        _write(labels, s.slice_index, lid, s.mask)

    total = sum(
        (n_z - 1 - s.slice_index) if d > 0 else s.slice_index for s in seeds.values() for d in directions
    )
    done = 0
    for d in directions:
        # state per object: previous mask, logits, slices done in this direction, or None when stopped
        state: dict[int, tuple[np.ndarray, np.ndarray | None, int] | None] = {}
        order = sorted(seeds.items(), key=lambda kv: d * kv[1].slice_index)
        start = order[0][1].slice_index
        zs = range(start + d, n_z, d) if d > 0 else range(start + d, -1, -1)
        for z in zs:
            for lid, s in order:
                if d * (z - s.slice_index) == 1:
                    state[lid] = (s.mask, None, 0)
            for lid, st in list(state.items()):
                if st is None:
                    continue
                prev, logits, count = st
                prompt = prompt_from_mask(prev, logits if use_mask_input else None, n_points, box_margin)
                pred = predict(z, prompt)
                mask = np.asarray(pred.mask).astype(bool)
                reason = criteria.check(mask, float(pred.score), prev)
                if reason is None and max_slices is not None and count >= max_slices:
                    reason = f"max_slices={max_slices} reached"
                if reason is None:
                    _write(labels, z, lid, mask)
                    state[lid] = (mask, pred.logits, count + 1)
                    done += 1
                else:
                    state[lid] = None
                    remaining = (n_z - 1 - z) if d > 0 else z
                    done += 1 + remaining
                yield PropagationStep(
                    done=min(done, total), total=total,
                    message=f"label {lid}, slice {z}" + (f": stopped ({reason})" if reason else ""),
                    label_id=lid, z=z, direction=d, mask=mask if reason is None else None,
                    score=float(pred.score), stopped=reason, labels=labels,
                )
            if state and all(v is None for v in state.values()) and len(state) == len(seeds):
                break
    return labels


def is_sam2_model(obj: Any) -> bool:
    """Whether ``obj`` is a SAM 2.1 model or video predictor (checked without importing them)."""
    import sys

    model = sys.modules.get("napari_sam.model.sam2.sam2")
    video = sys.modules.get("napari_sam.engine.sam2.video_predictor")
    return (model is not None and isinstance(obj, model.SAM2Model)) or \
        (video is not None and isinstance(obj, video.SAM2VideoPredictor))


def propagate_blocking(predict, seeds, callback: Callable[[Progress], Any] | None = None, **kwargs) -> np.ndarray:
    """Blocking :func:`propagate` (``callback`` returning False cancels; partial labels are returned)."""
    holder: dict[str, np.ndarray] = {}

    def cb(p):
        if getattr(p, "labels", None) is not None:  # a PropagationStep, or a TrackingStep (SAM 2)
            holder["labels"] = p.labels
        return None if callback is None else callback(p)

    result = run_blocking(propagate(predict, seeds, **kwargs), callback=cb)
    return result if result is not None else holder.get("labels")
