"""Opening image files as lazy arrays: TIFF/OME-TIFF and zarr/OME-Zarr.

Nothing here reads pixel data: :func:`open_image` returns arrays backed by the
file (zarr arrays; for TIFF, tifffile's zarr store over the file, so
compressed, tiled and pyramidal TIFFs are read chunk by chunk). Slicing such an
array reads only the chunks it needs, which is how the
:class:`~napari_sam.engine.prediction.segmenter.Segmenter` reads big stacks slice by
slice and tile by tile.

- TIFF / OME-TIFF (``.tif``, ``.tiff``, ``.ome.tif``, ``.btf``): the first
  series; for pyramidal files all levels, largest first.
- zarr (v2 or v3) and OME-Zarr (NGFF 0.4 ``multiscales`` attribute, or 0.5
  ``ome.multiscales``): a plain array is used as is; a group's
  ``multiscales[0].datasets`` give the levels (largest first); a group
  without that metadata with an array named ``"0"`` (or a single array) uses it.

- plain images (``.png``, ``.jpg``, ``.jpeg``): read whole (they are small),
  axes ``"yx"`` or ``"yxs"`` (colour samples last); ``.npy``: memory-mapped.

Axis names (``axes``) come from OME metadata or tifffile's series axes
(e.g. ``"ZYX"``, ``"tczyx"``) when known; the data keep the file's axis order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidImageError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
#: every input suffix :func:`open_image` reads (zarr stores are folders, usually named ``*.zarr``)
INPUT_SUFFIXES = (*TIFF_SUFFIXES, ".zarr", *PLAIN_SUFFIXES, ".npy")


@dataclass(frozen=True)
class LazyImage:
    """An opened image file.

    Attributes:
        data: the full-resolution array (lazy: zarr array), axes in file order, e.g. (Z, Y, X).
        levels: all resolution levels, largest first (``levels[0] is data``).
        axes: axis names, one character per axis (e.g. ``"zyx"``), or None when unknown.
        path: the file or store that was opened.
    """

    data: Any
    levels: tuple[Any, ...]
    axes: str | None
    path: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def is_tiff(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def open_image(path: str | os.PathLike) -> LazyImage:
    """Open a TIFF/OME-TIFF file or a zarr/OME-Zarr store lazily.

    Raises:
        InvalidImageError: missing path, unknown format or unreadable file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidImageError(f"Image file not found: {p}")
    if is_tiff(p):
        return open_tiff(p)
    if p.is_dir() or p.suffix.lower() == ".zarr":
        return open_zarr(p)
    if p.suffix.lower() in PLAIN_SUFFIXES:
        return open_plain(p)
    if p.suffix.lower() == ".npy":
        return open_npy(p)
    raise InvalidImageError(
        f"Cannot read {p}: napari-sam opens TIFF/OME-TIFF files ({', '.join(TIFF_SUFFIXES)}), zarr/OME-Zarr "
        f"folders, plain images ({', '.join(PLAIN_SUFFIXES)}) and .npy arrays. Convert other formats first "
        "(e.g. with napari or bioformats)."
    )


def open_plain(path: str | os.PathLike) -> LazyImage:
    """A PNG/JPEG image, read whole with Pillow: (H, W) grey or (H, W, 3|4) colour; palette images as RGB."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as e:  # Pillow raises many types for bad files
        raise InvalidImageError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e
    return LazyImage(arr, (arr,), "yxs" if arr.ndim == 3 else "yx", str(path))


def open_npy(path: str | os.PathLike) -> LazyImage:
    """A ``.npy`` array, memory-mapped (never unpickled), axes unknown."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise InvalidImageError(f"Cannot read {path}: {type(e).__name__}: {e}") from e
    return LazyImage(arr, (arr,), None, str(path))


def open_tiff(path: str | os.PathLike) -> LazyImage:
    """The first series of a TIFF/OME-TIFF as zarr arrays backed by the file (all pyramid levels)."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes = series.axes.lower() if series.axes else None
            n_levels = len(series.levels)
        store = tifffile.imread(path, aszarr=True, series=0)
        node = zarr.open(store, mode="r")
    except Exception as e:  # tifffile raises many types for bad files
        raise InvalidImageError(f"Cannot read TIFF {path}: {type(e).__name__}: {e}") from e
    if isinstance(node, zarr.Array):
        levels = (node,)
    else:
        levels = tuple(node[str(i)] for i in range(n_levels))
    return LazyImage(levels[0], levels, axes, str(path))


def _multiscale_paths(attrs: dict) -> tuple[list[str], str | None] | None:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    first = ms[0]
    paths = [d["path"] for d in first.get("datasets", [])]
    axes = first.get("axes")
    names = None
    if axes:
        names = "".join((a["name"] if isinstance(a, dict) else str(a))[0].lower() for a in axes)
    return paths, names


def open_zarr(path: str | os.PathLike) -> LazyImage:
    """A zarr array, or the levels of an OME-Zarr multiscale group (read-only)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:
        raise InvalidImageError(f"Cannot open zarr store {path}: {type(e).__name__}: {e}") from e
    if isinstance(node, zarr.Array):
        return LazyImage(node, (node,), None, str(path))
    found = _multiscale_paths(dict(node.attrs))
    if found is not None and found[0]:
        paths, axes = found
        levels = tuple(node[p] for p in paths)
        return LazyImage(levels[0], levels, axes, str(path))
    arrays = dict(node.arrays())
    if "0" in arrays:
        return LazyImage(arrays["0"], (arrays["0"],), None, str(path))
    if len(arrays) == 1:
        (arr,) = arrays.values()
        return LazyImage(arr, (arr,), None, str(path))
    raise InvalidImageError(
        f"The zarr group {path} has no OME-Zarr 'multiscales' metadata and holds {len(arrays)} arrays "
        f"({sorted(arrays)[:5]}); open the array you want (e.g. {path}/<name>)."
    )
