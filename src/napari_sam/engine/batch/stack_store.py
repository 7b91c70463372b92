"""A batch job's input and output: the stack source, the zarr stack store, and the step
"segment one slice and write it" shared by the local loop and the Dask tasks.

The output layout, the ``done`` records and the resume rules are described in
:mod:`napari_sam.engine.batch.run`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BatchWriteError, InvalidImageError, InvalidOutputError, OutputExistsError
from ..automatic.slice_segmenter import SegmentSliceFn, SliceSegmenterSpec, resolve
from ..progress import Progress
from ..volumes.stack_linking import StackLinker
from .job_record import JOB_KEY, read_tiff_record, write_tiff

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


def open_input(input: Any) -> tuple[Any, StackSource]:
    if isinstance(input, (str, os.PathLike)):
        from ..images.io import INPUT_SUFFIXES

        p = Path(input).expanduser()
        if not p.exists():
            raise InvalidImageError(f"Input {p} does not exist.")
        if p.suffix.lower() not in INPUT_SUFFIXES:
            raise InvalidImageError(f"Input {p}: expected one of {', '.join(INPUT_SUFFIXES)}.")
        source = StackSource(str(p.resolve()))
        return source.open(), source
    if not hasattr(input, "shape"):
        input = np.asarray(input)
    return input, StackSource(None)


def as_stack(arr: Any) -> tuple[Any, bool]:
    """Interpret an array as a stack of 2D slices. Returns (array, rgb).

    (H, W) -> one slice; (H, W, 3|4) -> one RGB slice; (Z, H, W); (Z, H, W, 3|4)
    (the colour guess is :func:`~napari_sam.engine.images.image_slices.guess_rgb`'s).
    A 2D image is treated as a stack of one slice (the result then has Z = 1).
    """
    from ..images.image_slices import guess_rgb

    shape = tuple(arr.shape)
    if 0 in shape:
        raise InvalidImageError(f"The input stack of shape {shape} is empty.")
    rgb = guess_rgb(shape)
    if len(shape) == 2 or (len(shape) == 3 and rgb):
        return np.asarray(arr)[None], rgb  # one slice: read it (zarr arrays cannot add an axis lazily)
    if len(shape) == 3 or (len(shape) == 4 and rgb):
        return arr, rgb
    raise InvalidImageError(
        f"Cannot read an input of shape {shape} as a z-stack: expected (Z, H, W), (Z, H, W, 3|4) or a 2D image."
    )


def input_fingerprint(stack: Any, source: StackSource) -> dict:
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
    """The zarr group holding a job's slices, records and linked labels (see the module docstring).

    Constructing it only checks (output suffix and folder, no overlap with ``inputs``, an existing
    output resumable or refused); nothing is created or removed until :meth:`open`.
    ``keep_finished``: a finished output (zarr, or TIFF with its record:
    :mod:`~napari_sam.engine.batch.job_record`) of this same job is not refused but marked
    ``finished`` (its record in ``existing``), for runs that skip what is already done.
    """

    def __init__(self, output: str | os.PathLike, job: dict, shape: tuple[int, int, int], overwrite: bool,
                 inputs: tuple[str | os.PathLike, ...] = (), keep_finished: bool = False) -> None:
        from ..store.output_paths import check_output

        self.output = Path(output).expanduser()
        suffix = self.output.suffix.lower()
        if suffix not in (".zarr", ".tif", ".tiff"):
            raise InvalidOutputError(f"Output {self.output}: expected a .zarr, .tif or .tiff path.")
        self.is_tiff = suffix != ".zarr"
        self.group_path = self.output.with_name(self.output.name + ".partial.zarr") if self.is_tiff else self.output
        check_output(self.output, inputs, also_writes=[self.group_path])
        self.job = json.loads(json.dumps({**job, "format": FORMAT}))  # as stored (tuples -> lists)
        self.shape = tuple(int(s) for s in shape)
        self.overwrite = overwrite
        self.keep_finished = keep_finished
        self.group = None
        self._plan()

    def _existing_job(self, path: Path) -> dict | None:
        import zarr

        try:
            return dict(zarr.open_group(str(path), mode="r").attrs).get(JOB_KEY)
        except Exception:  # not a zarr group at all
            return None

    def _plan(self) -> None:
        """Decide, touching nothing: start afresh, resume, or replace (overwrite); else refuse."""
        self.resumed = False
        self.finished = False
        self._replace = False
        old = self._existing_job(self.group_path) if self.group_path.exists() else None
        self.existing = old or {}
        same = old is not None and old.get("job") == self.job
        if self.group_path.is_dir() and not any(self.group_path.iterdir()):
            self._replace = True  # an empty folder (e.g. left by a failed creation): nothing to lose
        elif self.group_path.exists():
            if self.overwrite:
                self._replace = True
            elif same and not old.get("complete"):
                seg = self.job.get("segmenter") or {}
                if seg.get("kind") == "callable" and seg.get("code") is None:
                    raise OutputExistsError(
                        f"Output {self.group_path} holds an interrupted run, but the slice function "
                        f"{seg.get('name')} holds objects without a stable identity, so napari-sam cannot tell "
                        "whether it is the function that run used. Pass --overwrite / overwrite=True for a fresh "
                        "run (or make the function's state plain values: numbers, strings, arrays)."
                    )
                self.resumed = True
            elif same and self.keep_finished and not self.is_tiff:
                self.finished = True
            else:
                self._refuse(self.group_path, old, same)
        # A TIFF beside an unfinished group of this same job was written by this job just before a
        # failure (the group is removed right after the TIFF is in place): finish the job again.
        if self.is_tiff and self.output.exists() and not self.overwrite and not self.resumed:
            old = read_tiff_record(self.output)  # a damaged file is refused here
            same = old is not None and old.get("job") == self.job and bool(old.get("complete"))
            if not (same and self.keep_finished):
                self._refuse(self.output, old, same)
            self.finished, self.existing = True, old

    @staticmethod
    def _refuse(path: Path, old: dict | None, same: bool) -> None:
        why = ("holds a finished result of this job" if same else
               "holds the output of a different job" if old is not None else
               "is not a napari-sam output (it carries no job record: another program's file, or one written "
               "by an older napari-sam)")
        raise OutputExistsError(f"Output {path} exists and {why}; pass --overwrite / overwrite=True to replace it, "
                                "or choose another output path.")

    def open(self) -> None:
        """Create the output group (or open the one to resume)."""
        import zarr

        if self.resumed:
            self.group = zarr.open_group(str(self.group_path), mode="r+")
            self._create_arrays(self.group)  # any that an interrupted creation left out
            return
        if self._replace:
            _remove(self.group_path)
        try:
            # the job record first: an interrupted creation leaves a group that a rerun recognises
            g = zarr.open_group(str(self.group_path), mode="w")
            g.attrs[JOB_KEY] = {"job": self.job, "complete": False}
            self._create_arrays(g)
        except OSError as e:
            _remove(self.group_path)  # nothing of value in it yet
            raise BatchWriteError(f"Cannot create the output {self.group_path}: {e}. Nothing was written; "
                                  "free space (or fix permissions) and run again.") from e
        self.group = g

    def _create_arrays(self, g) -> None:
        z, h, w = self.shape
        if "slices" not in g:
            g.create_array("slices", shape=(z, h, w), chunks=(1, h, w), dtype="int32", fill_value=0)
        if "done" not in g:
            g.create_array("done", shape=(z,), chunks=(1,), dtype="uint8", fill_value=0)
        if "pixels" not in g:
            g.create_array("pixels", shape=(z, 2), chunks=(1, 2), dtype="uint64", fill_value=0)

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
        """Complete the output, marking it complete only once the final write has succeeded.

        zarr: ``labels`` is written (by :meth:`link`), then the record is set complete.
        TIFF: the TIFF is written atomically with the complete record in its description
        (:func:`~napari_sam.engine.batch.job_record.write_tiff`), then the partial group is removed; a failure
        before that leaves the group unfinished, so running the job again finishes it.
        """
        try:
            if not self.is_tiff:
                self.group.attrs[JOB_KEY] = {"job": self.job, "complete": True, "n_objects": int(n_objects)}
                return self.output
            write_tiff(self.output, np.asarray(self.group["labels"][:]),
                       {"job": self.job, "complete": True, "n_objects": int(n_objects)})
        except OSError as e:
            raise BatchWriteError(
                f"Writing the final output {self.output} failed: {e}. All slices are kept in {self.group_path}; "
                "free space (or fix the problem) and run the same command again to finish.",
                self.done_slices()) from e
        _remove(self.group_path)
        return self.output


def _remove(path: Path) -> None:
    """Remove a file or folder; a folder is first renamed aside, so a failure part-way never leaves a
    half-removed output under the output's name."""
    if path.is_dir() and not path.is_symlink():
        aside = path.with_name(f".{path.name}.removing-{os.getpid()}")
        try:
            os.replace(path, aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=aside != path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ---- one slice ----------------------------------------------------------------------------------
def segment_and_write(seg: SegmentSliceFn | SliceSegmenterSpec, image: np.ndarray, z: int, group_path: str) -> int:
    """Segment slice ``z`` (``image``: (H, W[, C])) and write it with its ``done`` record; returns ``z``.

    The one step of a batch job, run by the local loop and by each Dask task alike
    (a spec is built once per process: :func:`~napari_sam.engine.automatic.slice_segmenter.build_cached`).
    """
    from ..store.fingerprint import pixel_hash

    pixels = pixel_hash(image)  # before the segmenter runs: it may not modify what it was given
    labels = np.asarray(resolve(seg)(image))
    if labels.shape != image.shape[:2]:
        raise InvalidImageError(f"The slice segmenter returned shape {labels.shape} for slice {z}; "
                                f"expected {image.shape[:2]}.")
    write_slice(group_path, z, labels, pixels)
    return z


def resumable(error: BatchWriteError, done: list[int]) -> BatchWriteError:
    """``error`` with the slices finished and intact and how to resume (raise it ``from error``)."""
    return BatchWriteError(f"{error}. Slices finished and intact: {slice_ranges(done)}; "
                           f"run again (without overwrite) to resume.", done)


def slice_ranges(zs: list[int]) -> str:
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
