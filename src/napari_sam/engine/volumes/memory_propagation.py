"""Propagation with SAM 2.1 memory: several objects at once through a (Z|T, Y, X) sequence.

Where :mod:`.propagation` carries each object to the next slice with prompts made from
the previous slice (SAM 1), a :class:`MemoryTracker` hands the whole sequence to SAM 2.1's
video predictor: every frame attends to a memory bank of the prompted frames and the
recent ones, so objects are followed through time-lapse movies and z-stacks alike, and
all objects share one image encoding per frame.

- **Prompts** (:class:`ObjectPrompt`), on any frame, napari (row, col) order: clicks,
  a box, or a mask (e.g. an object drawn in a Labels layer: :meth:`MemoryTracker.add_labels`).
  Each object keeps its id (a positive integer, the label value) on every frame.
- **Propagation** (:meth:`MemoryTracker.run`): forward from the first prompted frame to
  the end, then backward from it to frame 0 (``directions``), or from any ``start`` frame
  (after a correction). A progress generator yielding a :class:`TrackingStep` per frame.
- **Corrections**: add prompts on any frame (clicks replace the object's clicks there) and
  run again, e.g. from that frame; the frames it reaches are rewritten.
- **Output**, written frame by frame as each is finished, so nothing accumulates: into a
  caller-given (T, H, W) integer array (numpy or zarr; filled in place) and/or passed to
  ``on_frame(t, plane)`` with the (H, W) int32 labels of the tracked objects on frame ``t``.
  Writing a frame replaces the tracked ids there; pixels of other ids are never
  overwritten; where objects overlap, the higher logit wins. On a frame where an object
  was given as a mask, that mask is written as given.
- **Memory** stays flat in the number of frames: frames are read and encoded one at a time
  (:class:`~napari_sam.engine.sam2.frames.FrameSource`), and the predictor runs with
  ``bounded_memory=True`` (see :class:`~napari_sam.engine.sam2.video_predictor.SAM2VideoPredictor`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidImageError, InvalidPromptError, InvalidSequenceError, TrackingError
from ..progress import Progress

#: ``(t, plane)``: the (H, W) int32 labels of the tracked objects on frame ``t``.
FrameCallback = Callable[[int, np.ndarray], Any]


@dataclass(frozen=True)
class ObjectPrompt:
    """A prompt for object ``obj_id`` on frame ``frame``, napari (row, col) order.

    Attributes:
        points: (N, 2) float (row, col) clicks, with ``point_labels`` (N,) 1 positive / 0 negative.
        box: (4,) float (row0, col0, row1, col1).
        mask: (H, W) bool; exclusive with points and box.
    """

    frame: int
    obj_id: int
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TrackingStep(Progress):
    """Progress of a tracking run after one frame.

    Attributes:
        frame: the frame just written.  direction: +1 forward, -1 backward.
        areas: ``{obj_id: pixels}`` on that frame (0: the object is absent there).
        labels: the (T, H, W) array being filled (a reference), or None with a callback only.
    """

    frame: int = 0
    direction: int = 1
    areas: dict = field(default_factory=dict)
    labels: Any = field(default=None, repr=False)


def _check_model(model: Any):
    from ..sam2.video_predictor import SAM2VideoPredictor

    if isinstance(model, SAM2VideoPredictor):
        return model
    return SAM2VideoPredictor(model, bounded_memory=True)  # a SAM 1 model: CheckpointError there


def _frame_source(frames: Any, intensity_limits):
    from ..sam2.frames import FrameSource

    if isinstance(frames, FrameSource):
        return frames
    if isinstance(frames, (list, tuple)):
        shapes = [tuple(np.shape(f)) for f in frames]
        if len(set(shapes)) > 1:
            bad = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise InvalidSequenceError(
                f"Frames have different shapes: frame {bad} is {shapes[bad]}, frame 0 {shapes[0]}. "
                f"Resize or crop them to one size."
            )
        frames = np.stack([np.asarray(f) for f in frames]) if frames else np.zeros((0, 0, 0))
    return FrameSource(frames, intensity_limits)


class MemoryTracker:
    """Track objects through a sequence with SAM 2.1 memory (see the module docstring).

    Args:
        model: a :class:`~napari_sam.model.sam2.SAM2Model` (or a ready ``SAM2VideoPredictor``).
        frames: (T, H, W) or (T, H, W, 3|4) array (numpy, zarr, dask; read frame by frame),
            a list of 2-D frames of one shape, a TIFF/zarr path or a folder of JPEG frames.
        labels: (T, H, W) integer array filled in place; a new int32 array when None and no
            ``on_frame`` is given.
        on_frame: called with each finished frame's labels (see :data:`FrameCallback`).
        intensity_limits: (low, high) for non-uint8 frames (default: from sampled frames).
    """

    def __init__(self, model: Any, frames: Any, labels: Any = None, on_frame: FrameCallback | None = None,
                 intensity_limits: tuple[float, float] | None = None) -> None:
        self.predictor = _check_model(model)
        source = _frame_source(frames, intensity_limits)
        self.shape = (source.num_frames, source.height, source.width)
        if labels is None and on_frame is None:
            labels = np.zeros(self.shape, np.int32)
        if labels is not None:
            if tuple(labels.shape) != self.shape:
                raise InvalidImageError(
                    f"labels have shape {tuple(labels.shape)}; the sequence is {self.shape} (T, H, W)."
                )
            if not np.issubdtype(np.dtype(labels.dtype), np.integer):
                raise InvalidImageError(f"labels must be an integer array; got {labels.dtype}.")
        self.labels, self.on_frame = labels, on_frame
        self.state = self.predictor.init_state(source)
        self._given_masks: dict[tuple[int, int], np.ndarray] = {}  # (frame, id) -> mask as given

    @property
    def num_frames(self) -> int:
        return self.shape[0]

    @property
    def obj_ids(self) -> list[int]:
        return [int(i) for i in self.state.obj_ids]

    def prompted_frames(self) -> list[int]:
        """Frames holding a prompt of some object, ascending."""
        s = self.state
        frames = {t for d in (*s.point_inputs_per_obj.values(), *s.mask_inputs_per_obj.values()) for t in d}
        return sorted(frames)

    # ---- prompts ------------------------------------------------------------------------------
    def _check(self, p: ObjectPrompt) -> int:
        if isinstance(p.obj_id, bool) or not isinstance(p.obj_id, (int, np.integer)) or p.obj_id <= 0:
            raise InvalidPromptError(f"Object ids are positive integers (label values); got {p.obj_id!r}.")
        if isinstance(p.frame, bool) or not isinstance(p.frame, (int, np.integer)) \
                or not 0 <= p.frame < self.num_frames:
            raise InvalidPromptError(
                f"A prompt of object {p.obj_id} is on frame {p.frame!r}, outside the sequence "
                f"(frames 0 to {self.num_frames - 1})."
            )
        has_clicks = p.points is not None or p.box is not None
        if p.mask is not None and has_clicks:
            raise InvalidPromptError(f"Object {p.obj_id} on frame {p.frame}: give a mask or clicks/a box, not both.")
        if p.mask is None and not has_clicks:
            raise InvalidPromptError(f"Object {p.obj_id} on frame {p.frame}: the prompt has no points, box or mask.")
        return int(p.frame)

    def add(self, prompt: ObjectPrompt, clear_old_points: bool = True) -> np.ndarray:
        """Add (or correct) one object's prompt; returns its (H, W) bool mask on that frame."""
        t = self._check(prompt)
        oid = int(prompt.obj_id)
        p = self.predictor
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask).astype(bool)
            if mask.shape != self.shape[1:]:
                raise InvalidPromptError(f"The mask of object {oid} has shape {mask.shape}; frames are {self.shape[1:]}.")
            if not mask.any():
                raise InvalidPromptError(f"The mask of object {oid} on frame {t} is empty.")
            _, ids, logits = p.add_new_mask(self.state, t, oid, mask)
            self._given_masks[(t, oid)] = mask
        else:
            pts = lab = box = None
            if prompt.points is not None:
                pts = np.asarray(prompt.points, np.float64).reshape(-1, 2)[:, ::-1]  # (row, col) -> (x, y)
                lab = np.ones(len(pts), int) if prompt.point_labels is None else np.asarray(prompt.point_labels)
            if prompt.box is not None:
                b = np.asarray(prompt.box, np.float64).reshape(-1)
                if b.size != 4:
                    raise InvalidPromptError(f"A box is (row0, col0, row1, col1); got {b.size} numbers.")
                box = b[[1, 0, 3, 2]]
            _, ids, logits = p.add_new_points_or_box(self.state, t, oid, points=pts, labels=lab, box=box,
                                                     clear_old_points=clear_old_points or box is not None,
                                                     normalize_coords=False)
            self._given_masks.pop((t, oid), None)
        return (logits[list(ids).index(oid), 0] > 0).cpu().numpy()

    def add_prompts(self, prompts: Iterable[ObjectPrompt]) -> None:
        """Add several prompts; one object may not have two prompts on one frame."""
        prompts = list(prompts)
        seen: dict[tuple[int, int], ObjectPrompt] = {}
        for pr in prompts:
            self._check(pr)
            key = (int(pr.frame), int(pr.obj_id))
            if key in seen:
                raise InvalidPromptError(
                    f"Object id {pr.obj_id} has two prompts on frame {pr.frame}; give each object one prompt per "
                    f"frame (or a new id for another object)."
                )
            seen[key] = pr
        for pr in prompts:
            self.add(pr)

    def add_labels(self, labels_frame: np.ndarray, frame: int, ids: Iterable[int] | None = None) -> list[int]:
        """Seed objects from a (H, W) label image of frame ``frame`` (all its ids, or ``ids``); returns the ids."""
        plane = np.asarray(labels_frame)
        if plane.shape != self.shape[1:]:
            raise InvalidPromptError(f"Seed labels of shape {plane.shape} do not fit frames of {self.shape[1:]}.")
        present = [int(i) for i in np.unique(plane) if i > 0]
        ids = present if ids is None else [int(i) for i in ids]
        missing = [i for i in ids if i not in present]
        if missing:
            raise InvalidPromptError(f"Label(s) {missing} have no pixels on frame {frame}; seed them where they are drawn.")
        self.add_prompts(ObjectPrompt(frame, i, mask=plane == i) for i in ids)
        return ids

    # ---- propagation --------------------------------------------------------------------------
    def _write(self, t: int, logits) -> dict[int, int]:
        """Write frame ``t`` from (n_objects, 1, H, W) logits; returns the area of each id."""
        ids = self.obj_ids
        lg = logits[:, 0].float().cpu().numpy()
        for k, oid in enumerate(ids):
            given = self._given_masks.get((t, oid))
            if given is not None:
                lg[k] = np.where(given, np.inf, -np.inf)
        win = np.argmax(lg, axis=0)
        fg = np.take_along_axis(lg, win[None], 0)[0] > 0
        plane = np.where(fg, np.asarray(ids, np.int32)[win], 0).astype(np.int32)
        if self.labels is not None:
            old = np.array(self.labels[t])
            free = (old == 0) | np.isin(old, ids)
            new = np.where(np.isin(old, ids), 0, old)
            new[free & (plane > 0)] = plane[free & (plane > 0)]
            self.labels[t] = new.astype(old.dtype, copy=False)
        if self.on_frame is not None:
            self.on_frame(t, plane)
        return {oid: int((plane == oid).sum()) for oid in ids}

    def run(self, start: int | None = None, directions: tuple[int, ...] = (1, -1),
            max_frames: int | None = None) -> Generator[TrackingStep, None, Any]:
        """Propagate every object; a progress generator returning the labels array (None with a callback only).

        Args:
            start: the frame to start from (default: the first prompted frame); it is written too.
            directions: ``(1, -1)`` forward then backward, ``(1,)`` or ``(-1,)`` one way.
            max_frames: at most this many frames beyond ``start`` in each direction (None: to the end).
        """
        if not self.state.obj_ids:
            raise TrackingError("Nothing to propagate: add a prompt (clicks, a box or a mask) for at least one "
                                "object on some frame first.")
        if not directions or any(d not in (1, -1) for d in directions):
            raise InvalidPromptError(f"directions must hold 1 and/or -1; got {directions}.")
        first = self.prompted_frames()[0]
        start = first if start is None else start
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < self.num_frames:
            raise InvalidPromptError(f"start frame {start!r} is outside the sequence (0 to {self.num_frames - 1}).")
        n = self.num_frames
        spans = {d: (n - start if d > 0 else start + 1) for d in directions}
        if max_frames is not None:
            spans = {d: min(s, max_frames + 1) for d, s in spans.items()}
        total = sum(spans.values()) - (len(directions) - 1)  # the start frame is written once
        done = 0
        written_start = False
        for d in directions:
            gen = self.predictor.propagate_in_video(self.state, start_frame_idx=int(start),
                                                    max_frame_num_to_track=spans[d] - 1, reverse=d < 0)
            for t, _, logits in gen:
                if t == start and written_start:
                    continue
                written_start = True
                areas = self._write(t, logits)
                done += 1
                yield TrackingStep(done=done, total=total, message=f"frame {t}", frame=t, direction=d,
                                   areas=areas, labels=self.labels)
        return self.labels


def track(model: Any, frames: Any, prompts: Iterable[ObjectPrompt] = (), seed_labels: np.ndarray | None = None,
          seed_frame: int = 0, labels: Any = None, on_frame: FrameCallback | None = None,
          directions: tuple[int, ...] = (1, -1), intensity_limits: tuple[float, float] | None = None,
          axes: str | None = None, channel: Any = None) -> Generator[TrackingStep, None, Any]:
    """Track objects in one call: a progress generator returning the (T, H, W) labels.

    Seeds: ``prompts`` and/or ``seed_labels``, either a (H, W) label image of frame
    ``seed_frame`` or a (T, H, W) label array (every object on every frame where it is drawn
    becomes a mask prompt). ``axes``/``channel``: which axis is time (or z) and which channel
    the model sees (:func:`~napari_sam.engine.volumes.sequences.select_sequence`; a file's
    metadata is used when ``axes`` is left out). Other arguments as :class:`MemoryTracker`
    and :meth:`MemoryTracker.run`.
    """
    frames = sequence_frames(frames, axes, channel)
    tracker = MemoryTracker(model, frames, labels=labels, on_frame=on_frame, intensity_limits=intensity_limits)
    prompts = list(prompts)
    if seed_labels is not None:
        prompts += prompts_from_labels(seed_labels, tracker.shape, seed_frame)
    if not prompts:
        raise TrackingError("Nothing to track: give prompts or seed labels with at least one object.")
    tracker.add_prompts(prompts)
    return (yield from tracker.run(directions=directions))


def sequence_frames(frames: Any, axes: str | None = None, channel: Any = None) -> Any:
    """The (T, H, W[, 3|4]) frames of ``frames`` (an array or an image file; a JPEG folder as is)."""
    import os
    from pathlib import Path

    from .sequences import select_sequence

    if isinstance(frames, (str, os.PathLike)):
        path = Path(frames).expanduser()
        if path.is_dir() and any(p.suffix.lower() in (".jpg", ".jpeg") for p in path.iterdir()):
            return frames
        from ..images.io import open_image

        img = open_image(path)
        return select_sequence(img.data, axes, channel, file_axes=img.axes).frames
    if axes is not None or channel is not None:
        return select_sequence(frames, axes, channel).frames
    return frames


def propagate_seeds(model: Any, seeds: Any, image: Any, labels: Any = None, directions: tuple[int, ...] = (1, -1),
                    max_slices: int | None = None) -> Generator[TrackingStep, None, Any]:
    """:func:`~napari_sam.engine.volumes.propagation.propagate` with SAM 2 memory: ``seeds``
    ``{label_id: Seed(slice_index, (H, W) bool mask)}`` tracked through ``image`` (Z, H, W[, 3|4])
    from the first seeded slice; ``labels`` (Z, H, W) filled in place (new int32 when None)."""
    if image is None:
        raise InvalidImageError("Propagation with a SAM 2.1 model needs the stack: pass image=(Z, H, W) array.")
    if not seeds:
        raise TrackingError("No seeds given: draw the objects on a slice first ({label_id: Seed(slice, mask)}).")
    tracker = MemoryTracker(model, image, labels=labels)
    prompts = []
    for lid, s in seeds.items():
        index, mask = (s.slice_index, s.mask) if hasattr(s, "slice_index") else (s[0], s[1])  # a Seed or a pair
        prompts.append(ObjectPrompt(int(index), int(lid), mask=np.asarray(mask, bool)))
    tracker.add_prompts(prompts)
    start = min(p.frame for p in prompts)
    return (yield from tracker.run(start=start, directions=directions, max_frames=max_slices))


def prompts_from_labels(seed_labels: Any, shape: tuple[int, int, int], seed_frame: int = 0) -> list[ObjectPrompt]:
    """Mask prompts from a (H, W) label image of ``seed_frame`` or a (T, H, W) label array of the sequence."""
    seeds_shape = tuple(seed_labels.shape)
    if seeds_shape == shape[1:]:
        if isinstance(seed_frame, bool) or not 0 <= int(seed_frame) < shape[0]:
            raise InvalidPromptError(f"The seed frame {seed_frame} is outside the sequence (0 to {shape[0] - 1}).")
        planes = {int(seed_frame): np.asarray(seed_labels)}
    elif seeds_shape == shape:
        planes = {}
        for t in range(shape[0]):
            p = np.asarray(seed_labels[t])
            if p.any():
                planes[t] = p
    else:
        raise InvalidPromptError(
            f"Seed labels of shape {seeds_shape} fit neither a frame {shape[1:]} nor the sequence {shape} (T, H, W)."
        )
    if not any(np.issubdtype(p.dtype, np.integer) or p.dtype == bool for p in planes.values()) and planes:
        raise InvalidPromptError("Seed labels must be an integer label image.")
    out = [ObjectPrompt(t, int(i), mask=p == i) for t, p in planes.items() for i in np.unique(p) if i > 0]
    if not out:
        raise TrackingError("The seed labels hold no objects (all pixels are 0): draw the objects to track first.")
    return out


__all__ = ["FrameCallback", "MemoryTracker", "ObjectPrompt", "TrackingStep", "prompts_from_labels", "propagate_seeds",
           "sequence_frames", "track"]
