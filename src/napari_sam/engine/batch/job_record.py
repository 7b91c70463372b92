"""The job record a batch output carries, and how a finished TIFF output holds it.

A record is ``{"job": <the job description>, "complete": bool, "n_objects": int}`` stored under
:data:`JOB_KEY`: in a zarr output's group attributes, and in a finished TIFF output's
ImageDescription, as tifffile's JSON ("shaped") description
``{"shape": [Z, H, W], "napari_sam_job": {...}}``. The pixels, dtype, shape and pages of the
TIFF are what they would be without the record; tifffile, napari and other readers read it as before.

:func:`read_tiff_record` reads the record back from the file's first page and checks the file's
structure (pages, shape, dtype, every strip inside the file) without reading the pixels, so a
truncated or damaged TIFF is never taken for a finished output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...errors import OutputExistsError

JOB_KEY = "napari_sam_job"


def write_tiff(path: str | os.PathLike, labels: np.ndarray, record: dict) -> Path:
    """Write ``labels`` ((Z, H, W) int32) to ``path`` atomically (temp file + rename, the umask's
    mode), zlib-compressed, one page per slice, with ``record`` in the ImageDescription."""
    import tifffile

    from ..store.atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, photometric="minisblack", compression="zlib",
                         metadata={JOB_KEY: json.loads(json.dumps(record))})
    return Path(path)


def _damaged(path: Path, why: str) -> OutputExistsError:
    return OutputExistsError(
        f"Output {path} exists but {why}; it may be truncated or damaged. It was left as it is: move it aside "
        "(or delete it) and run again, or pass --overwrite / overwrite=True to replace it."
    )


def read_tiff_record(path: str | os.PathLike) -> dict | None:
    """The job record of the TIFF output ``path``, or None if it carries none (a TIFF written by
    another program or by a napari-sam older than the record).

    Only the file's tags are read, not its pixels. A file that cannot be read as a TIFF, a record
    that cannot be parsed, or a TIFF with a record whose pages do not hold the whole int32 stack of
    the shape its description states raises :class:`~napari_sam.errors.OutputExistsError` saying so.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages:
                raise ValueError("no image in it")
            description = pages[0].description
            size = tif.filehandle.size
            layout = [(p.shape, p.dtype, p.dataoffsets, p.databytecounts) for p in pages]
    except Exception as e:  # tifffile raises several types for a damaged file
        raise _damaged(path, f"cannot be read as a TIFF ({type(e).__name__}: {e})") from e
    if JOB_KEY not in description:
        return None
    try:
        meta = json.loads(description)
        record = meta[JOB_KEY]
        if not isinstance(record, dict) or not isinstance(record.get("job"), dict):
            raise ValueError("not a job record")
        z, h, w = (int(s) for s in meta["shape"])
    except (ValueError, TypeError, KeyError) as e:
        raise _damaged(path, f"its job record cannot be read ({type(e).__name__}: {e})") from e
    if len(layout) != z or any(s != (h, w) or d != np.int32 for s, d, _, _ in layout):
        raise _damaged(path, f"does not hold {z} int32 slices of {h} x {w} as its description says")
    if any(o + n > size for _, _, offs, counts in layout for o, n in zip(offs, counts)):
        raise _damaged(path, "its image data runs past the end of the file")
    return record
