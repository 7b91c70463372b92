"""Batch automatic segmentation of whole z-stacks, resumable, locally or on Dask.

``segment_stack(input, output)`` segments every slice on its own (SAM automatic
mask generation by default, any ``(image) -> labels`` callable otherwise),
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
:class:`~napari_sam.errors.OutputExistsError` unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BatchWriteError, InvalidImageError, OutputExistsError
from ..progress import Progress, run_blocking
from ..automatic.slice_segmenter import SegmentSliceFn, SliceSegmenterSpec, describe, resolve
from ..volumes.stack_linking import StackLinker

JOB_KEY = "napari_sam_job"
FORMAT = "napari-sam-stack/1"


# ---- input ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackSource:
    """Where the input stack lives: a file path (TIFF/OME-TIFF or zarr/OME-Zarr), or None for an
    in-memory array. Picklable, so a Dask worker can open the file itself."""

    path: str | None

    def open(self) -> Any:
        """The full-resolution array, lazy (:func:`napari_sam.engine.images.io.open_image`)."""
        from ..images.io import open_image

        return open_image(self.path).data


def _open_input(input: Any) -> tuple[Any, StackSource]:
    if isinstance(input, (str, os.PathLike)):
        from ..images.io import TIFF_SUFFIXES

        p = Path(input).expanduser()
        if not p.exists():
            raise InvalidImageError(f"Input {p} does not exist.")
        if p.suffix.lower() not in (*TIFF_SUFFIXES, ".zarr"):
            raise InvalidImageError(f"Input {p}: expected a TIFF file (.tif, .tiff) or a .zarr store.")
        source = StackSource(str(p.resolve()))
        return source.open(), source
    if not hasattr(input, "shape"):
        input = np.asarray(input)
    return input, StackSource(None)


def as_stack(arr: Any) -> tuple[Any, bool]:
    """Interpret an array as a stack of 2D slices. Returns (array, rgb).

    (H, W) -> one slice; (H, W, 3|4) -> one RGB slice; (Z, H, W); (Z, H, W, 3|4).
    A 2D image is treated as a stack of one slice (the result then has Z = 1).
    """
    shape = tuple(arr.shape)
    if 0 in shape:
        raise InvalidImageError(f"The input stack of shape {shape} is empty.")
    if len(shape) == 2:
        return np.asarray(arr)[None], False  # one slice: read it (zarr arrays cannot add an axis lazily)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[-2] > 4:
        return np.asarray(arr)[None], True
    if len(shape) == 3:
        return arr, False
    if len(shape) == 4 and shape[-1] in (3, 4):
        return arr, True
    raise InvalidImageError(
        f"Cannot read an input of shape {shape} as a z-stack: expected (Z, H, W), (Z, H, W, 3|4) or a 2D image."
    )


def _fingerprint(stack: Any, source: StackSource) -> dict:
    """Identify the input cheaply: path, shape, dtype and a hash of sampled pixels
    (:func:`napari_sam.engine.store.fingerprint.image_fingerprint`)."""
    from ..store.fingerprint import image_fingerprint

    return {"path": source.path, "shape": list(stack.shape), "dtype": str(stack.dtype),
            "pixels": image_fingerprint(stack)}


# ---- output store -----------------------------------------------------------------------------
def write_slice(group_path: str, z: int, labels: np.ndarray, pixels: bytes | None = None) -> None:
    """Write slice ``z`` (whole chunk) to ``slices``, the hash of the input pixels it was computed from
    (:func:`~napari_sam.engine.store.fingerprint.pixel_hash`) to ``pixels``, then set its ``done``
    record. Idempotent."""
    import zarr

    try:
        g = zarr.open_group(group_path, mode="r+")
        g["slices"][z] = np.asarray(labels, dtype=np.int32)
        if pixels is not None and "pixels" in g:
            g["pixels"][z] = np.frombuffer(pixels, "<u8")
        g["done"][z] = 1
    except OSError as e:
        raise BatchWriteError(f"Writing slice {z} to {group_path} failed: {e}") from e


class StackStore:
    """The zarr group holding a job's slices, records and linked labels (see the module docstring)."""

    def __init__(self, output: str | os.PathLike, job: dict, shape: tuple[int, int, int], overwrite: bool) -> None:
        self.output = Path(output).expanduser()
        suffix = self.output.suffix.lower()
        if suffix not in (".zarr", ".tif", ".tiff"):
            raise InvalidImageError(f"Output {self.output}: expected a .zarr, .tif or .tiff path.")
        self.is_tiff = suffix != ".zarr"
        self.group_path = self.output.with_name(self.output.name + ".partial.zarr") if self.is_tiff else self.output
        self.job = json.loads(json.dumps({**job, "format": FORMAT}))  # as stored (tuples -> lists)
        self.shape = tuple(int(s) for s in shape)
        self._open(overwrite)

    def _existing_job(self, path: Path) -> dict | None:
        import zarr

        try:
            return dict(zarr.open_group(str(path), mode="r").attrs).get(JOB_KEY)
        except Exception:  # not a zarr group at all
            return None

    def _open(self, overwrite: bool) -> None:
        import zarr

        if self.is_tiff and self.output.exists() and not overwrite:
            raise OutputExistsError(f"Output {self.output} exists; pass --overwrite / overwrite=True to replace it.")
        self.resumed = False
        if self.group_path.exists():
            old = self._existing_job(self.group_path)
            same = old is not None and old.get("job") == self.job
            if same and not old.get("complete") and not overwrite:
                seg = self.job.get("segmenter") or {}
                if seg.get("kind") == "callable" and seg.get("code") is None:
                    raise OutputExistsError(
                        f"Output {self.group_path} holds an interrupted run, but the slice function "
                        f"{seg.get('name')} holds objects without a stable identity, so napari-sam cannot tell "
                        "whether it is the function that run used. Pass --overwrite / overwrite=True for a fresh "
                        "run (or make the function's state plain values: numbers, strings, arrays)."
                    )
                self.resumed = True
            elif not overwrite:
                why = ("holds a finished result of this job" if same else
                       "holds the output of a different job" if old is not None else "is not a napari-sam output")
                raise OutputExistsError(
                    f"Output {self.group_path} exists and {why}; pass --overwrite / overwrite=True to replace it."
                )
            else:
                _remove(self.group_path)
        if self.resumed:
            self.group = zarr.open_group(str(self.group_path), mode="r+")
            return
        try:
            g = zarr.open_group(str(self.group_path), mode="w")
            z, h, w = self.shape
            g.create_array("slices", shape=(z, h, w), chunks=(1, h, w), dtype="int32", fill_value=0)
            g.create_array("done", shape=(z,), chunks=(1,), dtype="uint8", fill_value=0)
            g.create_array("pixels", shape=(z, 2), chunks=(1, 2), dtype="uint64", fill_value=0)
            g.attrs[JOB_KEY] = {"job": self.job, "complete": False}
        except OSError as e:
            raise BatchWriteError(f"Cannot create the output {self.group_path}: {e}") from e
        self.group = g

    def done_slices(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.group["done"][:])]

    def verified_done_slices(self, stack: Any) -> list[int]:
        """The done slices whose recorded input hash matches the pixels of ``stack[z]`` now (a slice
        edited since, or recorded without a hash, is done again)."""
        from ..store.fingerprint import pixel_hash

        done = self.done_slices()
        if not done or "pixels" not in self.group:
            return []
        recorded = np.asarray(self.group["pixels"][:])
        return [z for z in done if recorded[z].tobytes() == np.frombuffer(pixel_hash(stack[z]), "<u8").tobytes()]

    def write_slice(self, z: int, labels: np.ndarray, pixels: bytes | None = None) -> None:
        write_slice(str(self.group_path), z, labels, pixels)

    def link(self, iou_threshold: float) -> Generator[Progress, None, int]:
        """Link all slices into ``labels``; a progress generator returning the number of 3D objects."""
        z_n, h, w = self.shape
        try:
            out = self.group.create_array("labels", shape=(z_n, h, w), chunks=(1, h, w), dtype="int32",
                                          fill_value=0, overwrite=True)
            linker = StackLinker(iou_threshold)
            slices = self.group["slices"]
            for z in range(z_n):
                out[z] = linker.link(slices[z])
                yield Progress(z + 1, z_n, f"linking slice {z}")
        except OSError as e:
            raise BatchWriteError(f"Writing the linked labels to {self.group_path} failed: {e}",
                                  self.done_slices()) from e
        return linker.next_id - 1

    def finish(self, n_objects: int) -> Path:
        """Mark complete; for a TIFF output write it atomically and drop the partial group."""
        try:
            self.group.attrs[JOB_KEY] = {"job": self.job, "complete": True, "n_objects": int(n_objects)}
            if not self.is_tiff:
                return self.output
            import tifffile

            from ..store.atomic import atomic_path

            with atomic_path(self.output) as tmp:
                tifffile.imwrite(tmp, np.asarray(self.group["labels"][:]), photometric="minisblack", compression="zlib")
        except OSError as e:
            raise BatchWriteError(f"Writing the final output {self.output} failed: {e}", self.done_slices()) from e
        _remove(self.group_path)
        return self.output


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---- the job ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackResult:
    """A finished batch run: ``path`` of the output, ``n_objects`` 3D objects, ``n_slices`` Z,
    ``resumed_slices`` how many slices were kept from an interrupted run."""

    path: Path
    n_objects: int
    n_slices: int
    resumed_slices: int


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
    points_per_side: int = 32,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    min_mask_region_area: int = 0,
    precision: str | None = None,
    iou_threshold: float = 0.3,
    axes: str | None = None,
    channel: Any = None,
) -> Generator[Progress, None, StackResult]:
    """Segment every slice of a stack and link the instances into 3D labels; a progress generator.

    Args:
        input: a .tif/.tiff/.zarr path, or an array: (Z, H, W), (Z, H, W, C), or 2D (one slice).
        output: ``.zarr`` (a group, see the module docstring) or ``.tif``/``.tiff``.
        model: zoo name or checkpoint path for the default SAM slice segmenter
            (None: :func:`~napari_sam.engine.models.zoo.default_model_name`).
        tile: (rows, cols) tiles for large slices.  device/precision: for the model.
        overwrite: replace an existing output instead of refusing / resuming.
        client: a ``dask.distributed.Client``: slices run as tasks on its workers.
        segment_slice: any ``(image (H, W[, C])) -> (H, W) int labels`` callable instead of
            SAM (must be picklable when ``client`` is given); ``tile`` still applies.
        points_per_side ... min_mask_region_area: automatic mask generation settings.
        iou_threshold: linking threshold (see :mod:`napari_sam.engine.volumes.stack_linking`).
        axes, channel: axis letters (default: the file's metadata, else the shape where unambiguous)
            and the channel (index, list or ``"mean"``) of a multichannel input; see
            :mod:`napari_sam.engine.images.channels`.

    Progress: ``total`` = Z while segmenting, then Z while linking (``message`` says which).

    Raises:
        OutputExistsError, BatchWriteError (``done_slices`` lists the intact slices),
        InvalidImageError for an empty or unreadable input.
    """
    raw, source = _open_input(input)
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
    from ..images.normalize import check_dtype, needs_limits

    check_dtype(stack.dtype)
    if segment_slice is None:
        limits = None
        if needs_limits(stack.dtype):
            from ..images.normalize import intensity_range

            picks = np.unique(np.linspace(0, n_z - 1, min(n_z, 8)).astype(int))
            limits = tuple(intensity_range(np.stack([np.asarray(stack[int(z)]) for z in picks])))
        seg: SegmentSliceFn | SliceSegmenterSpec = SliceSegmenterSpec(
            model=None if model is None else str(model), device=device, precision=precision,
            points_per_side=int(points_per_side), pred_iou_thresh=float(pred_iou_thresh),
            stability_score_thresh=float(stability_score_thresh), min_mask_region_area=int(min_mask_region_area),
            intensity_limits=limits, tile=None if tile is None else (int(tile[0]), int(tile[1])),
        )
    else:
        from ..automatic.slice_segmenter import tiled

        seg = tiled(segment_slice, tile) if tile else segment_slice
    job = {"input": {**_fingerprint(stack, source), "axes": axes, "channel": channel}, "segmenter": describe(segment_slice or seg),
           "tile": None if tile is None else [int(t) for t in tile], "iou_threshold": float(iou_threshold)}
    store = StackStore(output, job, (n_z, h, w), overwrite)
    done_before = store.verified_done_slices(stack)
    todo = [z for z in range(n_z) if z not in set(done_before)]
    yield Progress(len(done_before), n_z, f"resuming: {len(done_before)} slices already done"
                   if done_before else "segmenting")
    if client is not None:
        from .distributed import run_slices

        yield from run_slices(client, seg, source, raw if source.path is None else None, rgb,
                              str(store.group_path), todo, n_z, len(done_before), store.done_slices)
    else:
        from ..store.fingerprint import pixel_hash

        fn = resolve(seg)
        for i, z in enumerate(todo):
            image = np.asarray(stack[z])
            pixels = pixel_hash(image)  # before the segmenter runs: it may not modify what it was given
            labels = np.asarray(fn(image))
            if labels.shape != (h, w):
                raise InvalidImageError(f"The slice segmenter returned shape {labels.shape} for slice {z}; "
                                        f"expected {(h, w)}.")
            try:
                store.write_slice(z, labels, pixels)
            except BatchWriteError as e:
                raise BatchWriteError(f"{e}. Slices finished and intact: {_ranges(store.done_slices())}; "
                                      f"run again (without overwrite) to resume.", store.done_slices()) from e
            yield Progress(len(done_before) + i + 1, n_z, f"segmented slice {z}")
    n_objects = yield from store.link(iou_threshold)
    path = store.finish(n_objects)
    return StackResult(path, n_objects, n_z, len(done_before))


def _ranges(zs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (or 'none')."""
    if not zs:
        return "none"
    out, start, prev = [], zs[0], zs[0]
    for z in zs[1:] + [None]:
        if z is not None and z == prev + 1:
            prev = z
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if z is not None:
            start = prev = z
    return ", ".join(out)


def segment_stack_blocking(
    input: Any, output: str | os.PathLike, callback: Callable[[Progress], Any] | None = None,
    show_progress: bool = False, **kwargs,
) -> StackResult | None:
    """Blocking :func:`segment_stack` (``callback`` returning False cancels and returns None)."""
    return run_blocking(segment_stack(input, output, **kwargs), callback=callback, show_progress=show_progress,
                        description="segmenting stack")
