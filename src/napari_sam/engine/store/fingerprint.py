"""Cheap identities for images and model weights, used to key the embedding cache.

- :func:`image_fingerprint`: shape, dtype and a hash of the pixel data. Arrays
  up to ``full_hash_bytes`` (64 MiB) are hashed whole (slice by slice, whatever
  the container, so a numpy copy and a zarr/TIFF/dask copy of the same data get
  the same identity); bigger ones are hashed from samples only: up to 16 slices spread
  along the leading axes (first and last included), and from each sampled 2D
  slice up to 9 windows of 128 x 128 pixels (corners, edge centres, centre).
  The whole array is never read. A change confined to pixels outside the
  samples of a big array is not detected; pass a different ``image_id`` to
  the Segmenter (or clear the cache) after editing big data in place.
- :func:`model_fingerprint`: the architecture name plus a hash of every
  parameter's name, shape and dtype and of a few sampled values per tensor
  (the first, last and 64 evenly strided elements), so fine-tuned or
  different weights get a different identity without hashing gigabytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

FULL_HASH_BYTES = 64 * 2**20
MAX_SLICES = 16
WINDOW = 128


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def _windows(h: int, w: int, size: int = WINDOW) -> list[tuple[slice, slice]]:
    rows = sorted({0, max(0, h // 2 - size // 2), max(0, h - size)})
    cols = sorted({0, max(0, w // 2 - size // 2), max(0, w - size)})
    return [(slice(r, min(h, r + size)), slice(c, min(w, c + size))) for r in rows for c in cols]


def image_fingerprint(data: Any, spatial_ndim: int = 2, full_hash_bytes: int = FULL_HASH_BYTES) -> str:
    """A hex identity of an nD array (numpy, zarr, dask, memmap).

    Args:
        data: array with ``.shape``, ``.dtype`` and numpy-style slicing.
        spatial_ndim: trailing axes of one slice (2 for (H, W), 3 for (H, W, C)).
    """
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    h = _digest()
    h.update(repr((shape, dtype.str)).encode())
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes <= full_hash_bytes:  # by size only, so numpy, zarr and dask copies agree
        h.update(b"full")
        lead = shape[:-spatial_ndim]
        for flat in range(int(np.prod(lead)) if lead else 1):
            key = tuple(int(i) for i in np.unravel_index(flat, lead)) if lead else ()
            h.update(np.ascontiguousarray(np.asarray(data[key] if key else data[...])).tobytes())
        return h.hexdigest()
    lead = shape[:-spatial_ndim]
    n = int(np.prod(lead)) if lead else 1
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int))
    hw = shape[-spatial_ndim:][:2]
    for flat in picks:
        key = tuple(int(i) for i in np.unravel_index(flat, lead)) if lead else ()
        for rs, cs in _windows(*hw):
            block = np.ascontiguousarray(np.asarray(data[key + (rs, cs)]))
            h.update(repr((key, rs.start, cs.start)).encode())
            h.update(block.tobytes())
    return h.hexdigest()


def model_fingerprint(model: Any, samples: int = 64) -> str:
    """A hex identity of a model's weights: names, shapes, dtypes and sampled values of its state dict
    (an attached instance decoder left out: it does not change embeddings)."""
    import torch

    h = _digest()
    h.update(str(getattr(model, "model_type", type(model).__name__)).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.startswith("instance_decoder."):  # embeddings do not depend on an attached decoder
                continue
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            idx = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            picked = torch.cat([flat[:1], flat[-1:], flat[idx]]).float().cpu().numpy()
            h.update(picked.tobytes())
    return h.hexdigest()
