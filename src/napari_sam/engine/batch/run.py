"""Batch automatic segmentation of whole z-stacks, resumable, locally or on Dask.

``segment_stack(input, output)`` segments every slice on its own (the model's
instance decoder when it has one, else SAM's automatic mask generation; any
``(image) -> labels`` callable otherwise),
writes each slice as soon as it is done, then links the 2D instances across z
into 3D objects (:mod:`napari_sam.engine.volumes.stack_linking`).

Output layout (``output`` ending in ``.zarr``) - a zarr group:

- ``slices``  (Z, H, W) int32, chunks (1, H, W): slice-local instance labels;
- ``done``    (Z,) uint8, chunks (1,): 1 once slice z is written (the per-slice
  record; zarr writes each chunk through a temp file + rename, and the record
  is written after the slice data, so a set record means a whole slice);
- ``labels``  (Z, H, W) int32, chunks (1, H, W): the linked 3D labels, written
  at the end;
- ``attrs["napari_sam_job"]``: what was run (input fingerprint, shape, slice
  segmenter, linking threshold) and ``complete``.

With a ``.tif``/``.tiff`` output the same group is kept next to it as
``<output>.partial.zarr`` while the job runs; at the end the TIFF is written
from ``labels`` to a temp file and moved into place (``os.replace``) and the
partial group is deleted.

Resume: if the output group (or the partial group of a TIFF output) exists,
holds a job record equal to this job's and is not complete, the slices whose
record is set are kept and skipped; the others are (re)done. Linking is cheap
and is always re-run over all slices at the end. An existing output that is
complete, belongs to another job, or is not ours is refused with
:class:`~napari_sam.errors.OutputExistsError` unless ``overwrite=True``; with
``keep_finished=True`` (the command line's default) a complete output of this same job is
kept, not rewritten, and reported. A finished TIFF carries the same record in its
ImageDescription (:mod:`napari_sam.engine.batch.job_record`); a TIFF without one (another
program's, or an older napari-sam's) or that cannot be read is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BatchWriteError, InvalidImageError, InvalidParameterError
from ..automatic.settings import BATCH_DEFAULTS, AutoSettings
from ..automatic.slice_segmenter import SegmentSliceFn, SliceSegmenterSpec, describe, resolve, tiled
from ..progress import Progress, run_blocking
from .stack_store import StackSource, StackStore, as_stack, input_fingerprint, open_input, resumable, segment_and_write


# ---- the job ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackResult:
    """A finished batch run: ``path`` of the output, ``n_objects`` 3D objects, ``n_slices`` Z,
    ``resumed_slices`` how many slices were kept from an interrupted run, ``kept`` whether the
    output was already finished by an earlier run of this job and kept as it was (``keep_finished``)."""

    path: Path
    n_objects: int
    n_slices: int
    resumed_slices: int
    kept: bool = False


def open_labels(path: str | os.PathLike) -> Any:
    """The (Z, H, W) int32 labels of a finished run: a lazy zarr array (.zarr) or a numpy array (TIFF)."""
    p = Path(path)
    if p.suffix.lower() == ".zarr":
        import zarr

        return zarr.open_group(str(p), mode="r")["labels"]
    import tifffile

    return tifffile.imread(p)


def segment_stack(
    input: Any,
    output: str | os.PathLike,
    model: str | os.PathLike | None = None,
    tile: tuple[int, int] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    client: Any = None,
    segment_slice: SegmentSliceFn | None = None,
    settings: AutoSettings | None = None,
    precision: str | None = None,
    iou_threshold: float = 0.3,
    axes: str | None = None,
    channel: Any = None,
    keep_finished: bool = False,
) -> Generator[Progress, None, StackResult]:
    """Segment every slice of a stack and link the instances into 3D labels; a progress generator.

    Args:
        input: a .tif/.tiff/.zarr path, or an array: (Z, H, W), (Z, H, W, C), or 2D (one slice).
        output: ``.zarr`` (a group, see the module docstring) or ``.tif``/``.tiff``.
        model: zoo name or checkpoint path for the default SAM slice segmenter
            (None: :func:`~napari_sam.engine.models.zoo.default_model_name`).
        tile: (rows, cols) tiles for large slices (for SAM the same as ``settings.tile_shape``:
            tiled by the automatic mask generator; for ``segment_slice``, :func:`tiled`).
        device/precision: how the model runs (resolved where it is built).
        overwrite: replace an existing output instead of refusing / resuming.
        keep_finished: a finished output of this very job (same input, segmenter and settings:
            its job record says so) is kept as it is and returned (``kept``)
            instead of refused; ``napari-sam segment`` sets it unless ``--overwrite``.
        client: a ``dask.distributed.Client``: slices run as tasks on its workers.
        segment_slice: any ``(image (H, W[, C])) -> (H, W) int labels`` callable instead of
            SAM (must be picklable when ``client`` is given); ``tile`` still applies.
        settings: :class:`~napari_sam.engine.automatic.settings.AutoSettings` of the SAM slice
            segmenter (None: the batch defaults): ``method`` ``"ais"`` (the model's decoder), ``"amg"``
            (grid prompts) or None (the decoder when the model has one); thresholds left at None are
            the model's. The resolved settings are recorded with the job.
        iou_threshold: linking threshold (see :mod:`napari_sam.engine.volumes.stack_linking`).
        axes, channel: axis letters (default: the file's metadata, else the shape where unambiguous)
            and the channel (index, list or ``"mean"``) of a multichannel input; see
            :mod:`napari_sam.engine.images.channels`.

    Progress: ``total`` = Z while segmenting, then Z while linking (``message`` says which).

    Everything (input, output path, existing output, model) is checked before the output is
    created; an output that is, contains or lies inside the input is refused even with ``overwrite``.

    Raises:
        OutputExistsError, BatchWriteError (``done_slices`` lists the intact slices),
        InvalidImageError for an empty or unreadable input, InvalidOutputError for an unusable
        output path, UnknownModelError / CheckpointError for a model that cannot be found.
    """
    raw, source = open_input(input)
    if axes is None and source.path is not None:
        from ..images.io import open_image

        axes = open_image(source.path).axes
    from ..images.channels import select_channels

    selected, rgb_from_axes = select_channels(raw, axes, channel)
    if selected is not raw:  # a channel was picked: workers get the (lazy) selection, not the file
        raw, source = selected, StackSource(None)
    stack, rgb = as_stack(raw)
    if rgb_from_axes is not None and len(stack.shape) == 4 and rgb != rgb_from_axes:
        raise InvalidImageError(f"Cannot read an input of shape {tuple(raw.shape)} with axes {axes!r} as a z-stack "
                                "of 2D images: expected (Z, Y, X) or (Z, Y, X, 3|4) after choosing the channel.")
    if source.path is None and len(raw.shape) != len(stack.shape):
        raw = stack  # in-memory 2D input: send the added slice axis along
    n_z, h, w = (int(s) for s in stack.shape[:3])
    from ..images.normalize import check_dtype

    check_dtype(stack.dtype)
    if segment_slice is None:
        from ..images.image_slices import ImageSlices

        settings = _with_tile(settings if settings is not None else BATCH_DEFAULTS, tile)
        tile = settings.tile_shape
        from ..models.zoo import default_model_name

        # the default is decided once, here, and recorded with the job: workers build this very model, and
        # a resume after the default changed (a model downloaded since) is refused like any other change
        spec = SliceSegmenterSpec(
            model=default_model_name() if model is None else str(model), device=device, precision=precision,
            settings=settings,
            intensity_limits=ImageSlices(stack, rgb=rgb).intensity_limits(),
        )
        from ..models.zoo import check_model

        check_model(spec.model)  # a typo gets "did you mean" before anything is loaded or created
        # the method and the model's thresholds are fixed now and recorded with the job, so a resume
        # with another method (or other thresholds) is refused like any other change of settings
        seg: SegmentSliceFn | SliceSegmenterSpec = spec.resolved()
    else:
        if settings is not None:
            raise InvalidParameterError("settings are for SAM's automatic segmentation; a segment_slice "
                                        "callable takes none (give one or the other).")
        seg = tiled(segment_slice, tile) if tile else segment_slice
    job = {"input": {**input_fingerprint(stack, source), "axes": axes, "channel": channel}, "segmenter": describe(segment_slice or seg),
           "tile": None if tile is None else [int(t) for t in tile], "iou_threshold": float(iou_threshold)}
    store = StackStore(output, job, (n_z, h, w), overwrite, inputs=(source.path,) if source.path else (),
                       keep_finished=keep_finished)
    if store.finished:
        yield Progress(n_z, n_z, "already finished")
        return StackResult(store.output, int(store.existing.get("n_objects", 0)), n_z, n_z, kept=True)
    # everything is checked before the output is created: the model too (loaded here; on a
    # cluster each worker loads it, so only its name or file is checked, above)
    if client is None:
        resolve(seg)  # builds (and caches) the model now, so a broken model fails before the output exists
    store.open()
    done_before = store.verified_done_slices(stack)
    todo = [z for z in range(n_z) if z not in set(done_before)]
    yield Progress(len(done_before), n_z, f"resuming: {len(done_before)} slices already done"
                   if done_before else "segmenting")
    if client is not None:
        from .distributed import run_slices

        yield from run_slices(client, seg, source, raw if source.path is None else None,
                              str(store.group_path), todo, n_z, len(done_before), store.done_slices)
    else:
        for i, z in enumerate(todo):
            try:
                segment_and_write(seg, np.asarray(stack[z]), z, str(store.group_path))
            except BatchWriteError as e:
                raise resumable(e, store.done_slices()) from e
            yield Progress(len(done_before) + i + 1, n_z, f"segmented slice {z}")
    n_objects = yield from store.link(iou_threshold)
    path = store.finish(n_objects)
    return StackResult(path, n_objects, n_z, len(done_before))


def _with_tile(settings: AutoSettings, tile) -> AutoSettings:
    """``settings`` with ``tile`` as its tile shape; a different tile in both is refused."""
    if tile is None:
        return settings
    if settings.tile_shape is not None and tuple(settings.tile_shape) != tuple(int(t) for t in tile):
        raise InvalidParameterError(f"tile={tuple(tile)} and settings.tile_shape={settings.tile_shape} disagree; "
                                    "give the tile shape once.")
    return replace(settings, tile_shape=tile)


def segment_stack_blocking(
    input: Any, output: str | os.PathLike, callback: Callable[[Progress], Any] | None = None,
    show_progress: bool = False, **kwargs,
) -> StackResult | None:
    """Blocking :func:`segment_stack` (``callback`` returning False cancels and returns None)."""
    return run_blocking(segment_stack(input, output, **kwargs), callback=callback, show_progress=show_progress,
                        description="segmenting stack")
