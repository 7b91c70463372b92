"""npe2 reader: big TIFF/OME-TIFF files and zarr/OME-Zarr stores opened lazily.

napari's built-in TIFF reader loads the whole file into memory; this reader
hands napari file-backed arrays (all pyramid levels when present), so slide
scans and long stacks open at once and are read chunk by chunk.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..engine.images.io import is_tiff, open_image
from ..errors import InvalidImageError


def _is_zarr(path: str) -> bool:
    return path.rstrip("/\\").lower().endswith(".zarr")


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader function for ``path`` if it is one TIFF file or zarr store, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    if not (is_tiff(path) or _is_zarr(path)):
        return None
    return read_lazy


def read_lazy(path: str | list[str]) -> list[tuple]:
    """Open ``path`` lazily and return napari layer data ``[(data, kwargs, "image")]``."""
    if isinstance(path, list):
        path = path[0]
    try:
        img = open_image(path)
    except InvalidImageError:
        return []
    multiscale = len(img.levels) > 1
    data = list(img.levels) if multiscale else img.data
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    rgb = img.axes is not None and img.axes.lower().endswith("s") and img.shape[-1] in (3, 4)
    return [(data, {"multiscale": multiscale, "name": name, "rgb": rgb}, "image")]
