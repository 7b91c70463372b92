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
- :func:`pixel_hash`: xxh3-128 of exactly the pixels of one slice or tile crop
  (with its shape and dtype). Every cached embedding and every finished batch
  slice records the hash of the pixels it was computed from, and is reused
  only when the pixels hash the same now: the sampled fingerprint above only
  groups cache entries, it never decides that one is still valid. Hashing
  runs at several GB/s, far below an encoder pass.
- :func:`callable_identity`: a custom slice function recorded by its
  qualified name plus a hash of its code, defaults, closure, ``functools.partial``
  arguments and simple global constants, or ``None`` when it holds something
  that cannot be identified (then a batch run refuses to resume).
- :func:`model_fingerprint`: the architecture name plus a hash of every
  parameter's name, shape and dtype and of a few sampled values per tensor
  (the first, last and 64 evenly strided elements), so fine-tuned or
  different weights get a different identity without hashing gigabytes.
"""

from __future__ import annotations

import functools
import hashlib
import types
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


def pixel_hash(pixels: Any) -> bytes:
    """16-byte xxh3-128 digest of an array's exact pixels, shape and dtype (reads the whole array)."""
    import xxhash

    arr = np.ascontiguousarray(np.asarray(pixels))
    h = xxhash.xxh3_128()
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.digest()


class _Unidentifiable(Exception):
    pass


_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


def _feed(h: Any, obj: Any, depth: int = 0) -> None:
    """Hash ``obj`` by value; raises _Unidentifiable for objects without a stable identity."""
    if depth > 8:
        raise _Unidentifiable("nested too deeply")
    if isinstance(obj, _SIMPLE):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, np.ndarray):
        h.update(b"ndarray:" + pixel_hash(obj))
    elif isinstance(obj, np.generic):
        h.update(f"{obj.dtype.str}:{obj!r};".encode())
    elif isinstance(obj, (tuple, list, frozenset, set)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        h.update(f"{type(obj).__name__}[{len(items)}](".encode())
        for x in items:
            _feed(h, x, depth + 1)
        h.update(b")")
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}](".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k, depth + 1)
            _feed(h, obj[k], depth + 1)
        h.update(b")")
    elif isinstance(obj, functools.partial):
        h.update(b"partial(")
        for part in (obj.func, obj.args, obj.keywords):
            _feed(h, part, depth + 1)
        h.update(b")")
    elif isinstance(obj, types.CodeType):
        h.update(obj.co_code)
        h.update(repr((obj.co_names, obj.co_varnames, obj.co_argcount)).encode())
        for c in obj.co_consts:
            _feed(h, c, depth + 1)
    elif isinstance(obj, (types.FunctionType, types.MethodType)):
        fn = obj.__func__ if isinstance(obj, types.MethodType) else obj
        h.update(f"function:{fn.__module__}.{fn.__qualname__};".encode())
        _feed(h, fn.__code__, depth + 1)
        _feed(h, (fn.__defaults__, fn.__kwdefaults__), depth + 1)
        for cell in fn.__closure__ or ():
            _feed(h, cell.cell_contents, depth + 1)
        for name in fn.__code__.co_names:  # global constants the body reads (modules/functions: by name)
            value = fn.__globals__.get(name)
            if isinstance(value, _SIMPLE + (tuple,)):
                _feed(h, (name, value), depth + 1)
        if isinstance(obj, types.MethodType):
            _feed(h, obj.__self__, depth + 1)
    elif isinstance(obj, (types.BuiltinFunctionType, types.ModuleType, type)) or _importable(obj):
        h.update(f"{type(obj).__name__}:{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj.__name__)};"
                 .encode())
    elif hasattr(obj, "describe") and callable(obj.describe) and hasattr(obj, "__dataclass_fields__"):
        _feed(h, obj.describe(), depth + 1)
    elif hasattr(obj, "__dataclass_fields__"):
        h.update(f"dataclass:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        _feed(h, {f: getattr(obj, f) for f in obj.__dataclass_fields__}, depth + 1)
    elif callable(obj) and hasattr(obj, "__dict__") and not isinstance(obj, type):
        h.update(f"instance:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        _feed(h, type(obj).__call__, depth + 1)
        _feed(h, vars(obj), depth + 1)
    else:
        raise _Unidentifiable(f"{type(obj).__module__}.{type(obj).__qualname__}")


def _importable(obj: Any) -> bool:
    """A library callable reachable as ``module.qualname`` (e.g. numpy's functions): named by that."""
    import importlib

    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        return False
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is obj


def callable_identity(fn: Any) -> str | None:
    """Hex xxh3-128 of what a callable computes with (see the module docstring), or None when unknown."""
    import xxhash

    h = xxhash.xxh3_128()
    try:
        _feed(h, fn)
    except _Unidentifiable:
        return None
    return h.hexdigest()
