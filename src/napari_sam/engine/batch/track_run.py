"""Tracking a whole sequence into a file, resumable: what ``napari-sam track`` runs.

``track_sequence(input, output, seeds)`` follows the objects drawn in ``seeds`` through a
time-lapse (T, Y, X) or z-stack (Z, Y, X) with SAM 2.1 memory
(:mod:`napari_sam.engine.volumes.memory_propagation`) and writes each frame as soon as it
is finished. The output is the zarr group of :mod:`napari_sam.engine.batch.run` (``slices``
one frame each, ``done`` records, ``labels`` at the end; a TIFF output is written
atomically at the end from a ``.partial.zarr`` group beside it).

Everything is checked before the output is created: the input and its axes, the seeds
(shape, frame, at least one object), the model (a SAM 2.1 model), the output path (never
the input or the seeds; an existing output is resumed, refused, or replaced with
``overwrite``; with ``keep_finished``, the command line's default, a finished output of this
same job, .zarr or TIFF, is kept as it is and reported). The input and the seeds are only read.

Resume: a rerun with the same arguments keeps the frames already written (their input
pixels are re-checked) and tracks on from the last finished frame in each direction,
with that frame's stored masks as prompts beside the seeds (the memory of the frames
before it is not restored, so a resumed run can differ slightly from an uninterrupted one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BatchWriteError, CheckpointError
from ..progress import Progress, run_blocking
from .stack_store import StackSource, StackStore, input_fingerprint, open_input, resumable

DEFAULT_TRACK_MODEL = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class TrackResult:
    """A finished tracking run: ``path``, ``n_objects`` ids, ``n_frames``, ``resumed_frames`` kept;
    ``kept``: the output was already finished by an earlier run of this job and kept as it was."""

    path: Path
    n_objects: int
    n_frames: int
    resumed_frames: int
    kept: bool = False


def _open_seeds(seeds: Any) -> tuple[Any, str | None]:
    if isinstance(seeds, (str, os.PathLike)):
        from ...errors import InvalidPromptError
        from ..images.io import open_image

        p = Path(seeds).expanduser()
        if not p.exists():
            raise InvalidPromptError(f"Seed labels {p} do not exist.")
        return np.asarray(open_image(p).data), str(p.resolve())
    return np.asarray(seeds), None


def load_sam2(model: Any, device: str | None = None):
    """``model`` (zoo name, checkpoint path, built model, None: the default) as a SAM 2.1 model;
    :class:`~napari_sam.errors.CheckpointError` for a SAM 1 model."""
    from ...model.sam2 import SAM2Model

    if isinstance(model, SAM2Model):
        return model
    from ..models.zoo import load_model

    loaded = load_model(DEFAULT_TRACK_MODEL if model is None else model, device=device)
    if not isinstance(loaded, SAM2Model):
        raise CheckpointError(
            f"{model} is a SAM 1 model; tracking needs SAM 2.1 memory. Choose a SAM 2.1 model "
            f"(e.g. --model {DEFAULT_TRACK_MODEL}, or a sam2.1_hiera_*.pt checkpoint)."
        )
    return loaded


@dataclass
class PreparedTrack:
    """A tracking job checked and ready to run (:func:`prepare_track`); nothing written yet.

    ``frames`` (T, Y, X) lazy, ``shape`` (T, Y, X), ``prompts`` the seeds as
    :class:`~napari_sam.engine.volumes.memory_propagation.ObjectPrompt`, ``store`` the output
    (checked, not created), ``model`` as given, ``finished`` when ``keep_finished`` found a
    finished output of this very job.
    """

    frames: Any
    frame_source: Any
    shape: tuple[int, int, int]
    prompts: list
    store: StackStore
    model: Any
    input_path: str | None
    seeds_path: str | None

    @property
    def finished(self) -> bool:
        return bool(self.store.finished)


def prepare_track(
    input: Any,
    output: str | os.PathLike,
    seeds: Any,
    model: Any = None,
    axes: str | None = None,
    channel: Any = None,
    seed_frame: int = 0,
    overwrite: bool = False,
    keep_finished: bool = False,
) -> PreparedTrack:
    """Every check of :func:`track_sequence` except the model's, touching nothing on disk.

    ``keep_finished``: an existing finished output of this same job is kept (``finished``)
    instead of refused; the multi-sequence runs use it so a rerun skips finished sequences.
    """
    from ..images.normalize import check_dtype
    from ..sam2.frames import FrameSource
    from ..store.fingerprint import pixel_hash
    from ..volumes.memory_propagation import prompts_from_labels
    from ..volumes.sequences import select_sequence

    raw, source = open_input(input)
    file_axes = None
    if source.path is not None:
        from ..images.io import open_image

        file_axes = open_image(source.path).axes
    seq = select_sequence(raw, axes, channel, file_axes=file_axes)
    frames = seq.frames
    check_dtype(frames.dtype)
    frame_source = FrameSource(frames)  # one frame, frames of different sizes: refused here
    shape = (frame_source.num_frames, frame_source.height, frame_source.width)
    seed_array, seeds_path = _open_seeds(seeds)
    prompts = prompts_from_labels(seed_array, shape, seed_frame)
    job = {"kind": "track", "input": {**input_fingerprint(frames, StackSource(source.path)), "axes": axes,
                                      "channel": channel},
           "seeds": pixel_hash(seed_array).hex(), "seed_frame": int(seed_frame),
           "model": None if model is None or not isinstance(model, (str, os.PathLike)) else str(model)}
    inputs = tuple(p for p in (source.path, seeds_path) if p)
    store = StackStore(output, job, shape, overwrite, inputs=inputs, keep_finished=keep_finished)  # checks only
    return PreparedTrack(frames, frame_source, shape, prompts, store, model, source.path, seeds_path)


def track_sequence(
    input: Any,
    output: str | os.PathLike,
    seeds: Any,
    model: Any = None,
    axes: str | None = None,
    channel: Any = None,
    seed_frame: int = 0,
    overwrite: bool = False,
    device: str | None = None,
    keep_finished: bool = False,
) -> Generator[Progress, None, TrackResult]:
    """Track the seeded objects through a sequence into ``output``; a progress generator.

    Args:
        input: .tif/.tiff/.zarr path or array, (T, Y, X) / (Z, Y, X) (after ``axes``/``channel``).
        output: ``.zarr`` or ``.tif``/``.tiff``.
        seeds: label image (path or array): (Y, X) for frame ``seed_frame``, or (T, Y, X) with
            objects drawn on any frames.
        model: a SAM 2.1 zoo name, checkpoint path or built model (default sam2.1_hiera_tiny).
        axes, channel: see :func:`~napari_sam.engine.volumes.sequences.select_sequence`.
        keep_finished: a finished output (.zarr or TIFF) of this very job is kept as it is and
            returned (``kept``) instead of refused; ``napari-sam track``
            sets it unless ``--overwrite``.
    """
    prepared = prepare_track(input, output, seeds, model=model, axes=axes, channel=channel, seed_frame=seed_frame,
                             overwrite=overwrite, keep_finished=keep_finished)
    sam2 = load_sam2(model, device)
    return (yield from run_track(prepared, sam2))


def run_track(prepared: PreparedTrack, sam2: Any) -> Generator[Progress, None, TrackResult]:
    """Run a :func:`prepare_track` job with a loaded SAM 2.1 model (:func:`load_sam2`): create or
    resume the output, track, write each frame as it is done, finish. A progress generator."""
    from ..store.fingerprint import pixel_hash
    from ..volumes.memory_propagation import MemoryTracker, ObjectPrompt

    frames, frame_source, shape, prompts, store = (prepared.frames, prepared.frame_source, prepared.shape,
                                                   prepared.prompts, prepared.store)
    from ..sam2.video_predictor import SAM2VideoPredictor

    if not isinstance(sam2, SAM2VideoPredictor):
        # one predictor for every pass below: frames the forward pass encoded are reused from its feature store
        sam2 = SAM2VideoPredictor(sam2, bounded_memory=True)
    n = shape[0]
    if prepared.finished:
        yield Progress(n, n, "already finished")
        return TrackResult(store.output, int(store.existing.get("n_objects", 0)), n, n, kept=True)
    store.open()
    done = set(store.verified_done_slices(_Frames(frames)))
    first = min(p.frame for p in prompts)
    yield Progress(len(done), n, f"resuming: {len(done)} frames already done" if done else "tracking")

    def write(t: int, plane: np.ndarray) -> None:
        if t in done:
            return
        try:
            store.write_slice(t, plane, pixel_hash(np.asarray(frames[t])))
        except BatchWriteError as e:
            raise resumable(e, store.done_slices()) from e
        done.add(t)

    kept = len(done)
    plans = []  # (direction, start, extra prompts)
    for d in (1, -1):
        span = range(first, n) if d > 0 else range(first, -1, -1)
        finished = [t for t in span if t in done]
        last = None
        for t in span:  # the last frame of the finished run of frames from the first seed on
            if t not in done:
                break
            last = t
        if len(finished) == len(span):
            continue
        extra = []
        if last is not None and last != first:
            plane = np.asarray(store.group["slices"][last])
            have = {(p.frame, p.obj_id) for p in prompts}
            extra = [ObjectPrompt(last, int(i), mask=plane == i) for i in np.unique(plane)
                     if i > 0 and (last, int(i)) not in have]
        plans.append((d, first if last is None or not extra else last, extra))
    if len(plans) == 2 and not plans[0][2] and not plans[1][2]:
        plans = [((1, -1), first, [])]  # a fresh run: both directions in one memory, as uninterrupted
    for d, start, extra in plans:
        tracker = MemoryTracker(sam2, frame_source, on_frame=write)
        tracker.add_prompts(prompts + extra)
        for _ in tracker.run(start=start, directions=d if isinstance(d, tuple) else (d,)):
            yield Progress(len(done), n, "tracking")
    ids = sorted({p.obj_id for p in prompts})
    try:
        out = store.group.create_array("labels", shape=shape, chunks=(1, *shape[1:]), dtype="int32", fill_value=0,
                                       overwrite=True)
        for t in range(n):
            out[t] = store.group["slices"][t]
    except OSError as e:
        raise BatchWriteError(f"Writing the labels to {store.group_path} failed: {e}", store.done_slices()) from e
    path = store.finish(len(ids))
    return TrackResult(path, len(ids), n, kept)


class _Frames:
    """``frames[t]`` as numpy (the resume check hashes exactly what was hashed when written)."""

    def __init__(self, frames: Any) -> None:
        self._frames = frames

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self._frames[t])


def track_sequence_blocking(input: Any, output: str | os.PathLike, seeds: Any,
                            callback: Callable[[Progress], Any] | None = None, show_progress: bool = False,
                            **kwargs) -> TrackResult | None:
    """Blocking :func:`track_sequence` (``callback`` returning False cancels and returns None)."""
    return run_blocking(track_sequence(input, output, seeds, **kwargs), callback=callback,
                        show_progress=show_progress, description="napari-sam track")


__all__ = ["DEFAULT_TRACK_MODEL", "PreparedTrack", "TrackResult", "load_sam2", "prepare_track", "run_track",
           "track_sequence", "track_sequence_blocking"]
