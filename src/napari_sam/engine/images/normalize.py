"""Turning microscopy images into SAM's 8-bit RGB input.

SAM was trained on 8-bit RGB photographs. The rule used here, one fixed rule
per image:

- uint8 images are used as they are (no stretching), so results match the
  reference implementation exactly;
- any other dtype (uint16, int, float) is scaled linearly so that the 0.1th
  percentile maps to 0 and the 99.9th percentile to 255, then clipped and
  rounded to uint8. The range is subtracted before any cast to a narrower
  type: in float64, and exactly in integer arithmetic for 64-bit integer
  images (whose limits are then exact Python ints), so a large offset (1e12)
  or values near the dtype's maximum keep their real contrast. Callers that work on tiles or slices of a larger image pass
  the limits computed once for the whole image (``intensity_range``), so tiles
  and slices are never re-stretched on their own;
- bool images (masks) are read as 0/1 and shown to the model as 0/255;
  complex, string, bytes, object and other non-numeric dtypes are refused
  (:func:`check_dtype`, the one dtype rule of every entry point);
- grayscale (H, W) or (H, W, 1) becomes three identical channels; RGBA drops
  alpha; (H, W, 2) is refused.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import InvalidImageError

LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9


def intensity_range(image: np.ndarray, sample: int = 4_000_000) -> tuple[float, float]:
    """Robust (low, high) intensity limits of ``image`` from percentiles.

    For big arrays a strided sample of about ``sample`` pixels is used, so
    the cost stays bounded. Raises :class:`InvalidImageError` on NaN/inf.
    """
    arr = np.asarray(image)
    if arr.size > sample:
        step = int(np.ceil(arr.size / sample))
        arr = arr.reshape(-1)[::step]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidImageError("The image contains NaN or infinite values; replace them before segmenting.")
    if _wide_int(arr.dtype):  # float64 cannot hold every int64/uint64: exact order statistics instead
        lo, hi = np.percentile(arr, [LOW_PERCENTILE, HIGH_PERCENTILE], method="nearest")
        return int(lo), int(hi)
    lo, hi = np.percentile(arr, [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(lo), float(hi)


def _wide_int(dtype: np.dtype) -> bool:
    """Integer dtypes that float64 does not represent exactly (64-bit)."""
    return np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize >= 8


def _offset_from(arr: np.ndarray, lo: float | int, hi: float | int) -> np.ndarray:
    """``arr - lo`` as float64, with ``arr`` clipped to [lo, hi], without losing the contrast of
    large values: 64-bit integers are subtracted exactly (modulo 2**64, then read as uint64)."""
    if not _wide_int(arr.dtype):
        return np.clip(arr.astype(np.float64) - lo, 0.0, None)
    info = np.iinfo(arr.dtype)
    lo_i = min(max(math.floor(lo), int(info.min)), int(info.max))
    hi_i = min(max(math.ceil(hi), lo_i), int(info.max))
    clipped = np.clip(arr, np.array(lo_i, arr.dtype), np.array(hi_i, arr.dtype))
    diff = clipped.view(np.uint64) - np.array(lo_i, arr.dtype).view(np.uint64)  # exact: 0 <= arr - lo_i < 2**64
    return diff.astype(np.float64) - float(lo - lo_i)


_KIND_NAMES = {"c": "complex", "U": "string", "S": "bytes", "O": "object", "V": "structured", "M": "datetime",
               "m": "timedelta"}


def check_dtype(dtype) -> np.dtype:
    """The dtype rule of every entry point: integer, float and bool images are accepted.

    Raises :class:`InvalidImageError` naming the dtype and what to do for anything else.
    """
    dt = np.dtype(dtype)
    if dt.kind in "buif":
        return dt
    what = _KIND_NAMES.get(dt.kind, "non-numeric")
    hint = ("take the magnitude (np.abs) or the real part (.real) first" if dt.kind == "c"
            else "convert it to a numeric array first (e.g. with .astype(np.float32)); an image read as "
                 "strings or objects often means the file was not read as an image")
    raise InvalidImageError(
        f"Unsupported image dtype {dt} ({what}): napari-sam segments integer, float or bool images; {hint}."
    )


def needs_limits(dtype) -> bool:
    """Whether images of ``dtype`` are stretched with intensity limits (all but uint8 and bool)."""
    dt = check_dtype(dtype)
    return dt != np.uint8 and dt != np.bool_


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a 2D image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of a numeric dtype."""
    arr = np.asarray(image)
    check_dtype(arr.dtype)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        raise InvalidImageError(
            f"Image of shape {arr.shape} is not 2D: expected (H, W) or (H, W, C) with C in 1, 3, 4. "
            "For z-stacks or time series, pass one slice at a time (or use Segmenter with slice_index)."
        )
    if arr.ndim not in (2, 3):
        raise InvalidImageError(
            f"Image has {arr.ndim} dimensions {arr.shape}; expected a 2D image (H, W) or (H, W, C). "
            "Pass one slice of a stack at a time."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"Image of shape {arr.shape} is empty.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidImageError("The image contains NaN or infinite values; replace them before segmenting.")
    return arr


def to_uint8_rgb(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """Convert a 2D image to (H, W, 3) uint8 following the module's rule.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), any numeric dtype.
        limits: (low, high) intensity limits to use instead of this image's
            own percentiles (for tiles/slices of a larger image). Ignored for uint8.
    """
    arr = check_image(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        lo, hi = limits if limits is not None else intensity_range(arr)
        scale = 255.0 / float(hi - lo) if hi > lo else 0.0  # hi - lo: exact for Python ints
        arr = np.clip(_offset_from(arr, lo, hi) * scale, 0, 255)
        arr = np.rint(arr).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr)
