"""Embedding store: a byte-bounded in-memory LRU in front of an optional zarr v3 cache on disk.

Entries are image embeddings keyed by ``(slice, tile)`` (flat indices) inside
one *group*. A group holds the embeddings of one combination of

- image identity (:func:`~napari_sam.engine.store.fingerprint.image_fingerprint`: shape,
  dtype and sampled pixel data),
- model (architecture name + weights fingerprint) and encoder precision,
- preprocessing (the intensity limits used for normalisation, RGB or not),
- tiling (tile shape, halo, tile grid).

On disk, ``cache_dir/<hash of that signature>.zarr`` is a zarr v3 group with

- ``features``: (n_slices, n_tiles, C, h, w) float16 (``disk_dtype``), one chunk per entry;
- ``complete``: (n_slices, n_tiles) int64, one chunk per entry: 0 = absent,
  otherwise ``crc32(features bytes) + 1``;
- ``pixels``: (n_slices, n_tiles, 2) uint64, the xxh3-128 hash of exactly the
  pixels each entry was computed from (:func:`~napari_sam.engine.store.fingerprint.pixel_hash`).
  An entry is used only when the caller's pixels hash the same now (in memory
  too), so an edit anywhere in the data, even where the group's sampled image
  fingerprint does not look, recomputes exactly the entries it touched;
- attributes ``napari_sam_embeddings``: format version, package version
  (``napari_sam.__version__``), the signature, original/input sizes, tile grid.

Writes are atomic per entry: the features chunk is written first and the
``complete`` marker last (zarr's local store writes each chunk to a temporary
file and renames it into place), and readers trust only entries whose marker is
present and whose checksum matches. A killed process therefore leaves only
complete entries and an interrupted precompute resumes where it stopped.

SAM 2.1 entries (an :class:`~napari_sam.engine.prediction.predictor.Embedding` with
high-resolution levels) are kept in memory only: the disk format holds one feature array
per entry, and a SAM 2.1 image needs three (the image embedding and two high-resolution
levels) to give the same masks. :meth:`EmbeddingStore.open` with ``high_res_shapes``
therefore binds no disk group and says so (a :class:`CacheWarning`, or a
:class:`~napari_sam.errors.CacheError` with ``on_error="raise"``). The signature names the
model family and architecture, so SAM 1 and SAM 2.1 entries never share a group.

Problems are never silently used: a group whose attributes are unreadable or
disagree with the expected signature, format or package version is reported
with a :class:`CacheWarning` and rebuilt; an entry whose chunk cannot be
decoded or fails its checksum is reported and recomputed.

Cache folder that cannot be written (read-only, full, not a folder): with
``on_error="warn"`` (the Segmenter's default) a :class:`CacheWarning` is
issued and the store continues memory-only; with ``on_error="raise"`` (the
``napari-sam embed`` command, whose whole point is the disk cache) a
:class:`~napari_sam.errors.CacheError` is raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CacheError
from ..prediction.predictor import Embedding

FORMAT_VERSION = 2  # 2: per-entry pixel hashes
ATTRS_KEY = "napari_sam_embeddings"


class CacheWarning(UserWarning):
    """The embedding cache on disk was unusable, stale or corrupt; embeddings are recomputed."""


def signature_hash(signature: dict) -> str:
    """Stable hex name of a group for a JSON-serialisable signature."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _package_version() -> str:
    from ... import __version__

    return __version__


class EmbeddingStore:
    """Memory LRU (bounded in bytes) plus an optional persistent zarr v3 group per signature.

    Args:
        cache_dir: folder of the disk cache, or ``None`` for memory only.
        max_memory_bytes: bound of the in-memory LRU (at least one entry is always kept).
        disk_dtype: ``"float16"`` (default, half the disk size) or ``"float32"``.
        on_error: ``"warn"`` (warn and continue memory-only) or ``"raise"`` (raise CacheError)
            when the cache folder cannot be used.

    Call :meth:`open` with the group's signature and geometry before get/put.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        max_memory_bytes: int = 256 * 2**20,
        disk_dtype: str = "float16",
        on_error: str = "warn",
    ) -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}.")
        if disk_dtype not in ("float16", "float32"):
            raise ValueError(f"disk_dtype must be 'float16' or 'float32', got {disk_dtype!r}.")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.max_memory_bytes = int(max_memory_bytes)
        self.disk_dtype = np.dtype(disk_dtype)
        self.on_error = on_error
        self._memory: OrderedDict[tuple[int, int], Embedding] = OrderedDict()
        self._memory_pixels: dict[tuple[int, int], bytes | None] = {}
        self._memory_bytes = 0
        self._group = None
        self._group_path: Path | None = None
        self._sizes: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._writable = False
        self.signature: dict | None = None
        self._levels_refused = False

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def persistent(self) -> bool:
        """True when entries are read from and written to disk."""
        return self._group is not None

    @property
    def group_path(self) -> Path | None:
        return self._group_path

    def clear_memory(self) -> None:
        self._memory.clear()
        self._memory_pixels.clear()
        self._memory_bytes = 0

    def _problem(self, message: str, fallback: str = "continuing with the in-memory cache only",
                 exc: BaseException | None = None) -> None:
        """Report a cache problem: raise (``on_error="raise"``: nothing continues, and the message says
        how to fix it) or warn that the store carries on as ``fallback`` says."""
        if self.on_error == "raise":
            raise CacheError(f"{message}. Choose a writable cache folder with free space, or free some.") from exc
        warnings.warn(f"{message}; {fallback}.", CacheWarning, stacklevel=4)

    def open(
        self,
        signature: dict,
        n_slices: int,
        n_tiles: int,
        feature_shape: tuple[int, int, int],
        original_size: tuple[int, int],
        input_size: tuple[int, int],
        extra_attrs: dict | None = None,
        high_res_shapes: tuple = (),
    ) -> None:
        """Bind to the group of ``signature`` (creating or validating it on disk); clears memory.

        Args:
            signature: JSON-serialisable identity (image, model, preprocessing, tiling).
            n_slices, n_tiles: number of 2D slices and of tiles per slice.
            feature_shape: (C, h, w) of one embedding.
            original_size, input_size: (H, W) of a tile crop and of its resized encoder input.
            high_res_shapes: (C, h, w) of each further feature level (SAM 2.1); entries with
                such levels are kept in memory only (see the module docstring).
        """
        self.clear_memory()
        self.signature = signature
        self._sizes = (tuple(map(int, original_size)), tuple(map(int, input_size)))
        self._group = None
        self._group_path = None
        if self.cache_dir is None:
            return
        if high_res_shapes:
            self._refuse_levels()
            return
        self._writable = self._probe_writable()
        path = self.cache_dir / f"{signature_hash(signature)}.zarr"
        expected = {
            "format": FORMAT_VERSION,
            "package_version": _package_version(),
            "signature": signature,
            "n_slices": int(n_slices),
            "n_tiles": int(n_tiles),
            "feature_shape": [int(s) for s in feature_shape],
            "original_size": list(self._sizes[0]),
            "input_size": list(self._sizes[1]),
            "disk_dtype": self.disk_dtype.name,
            **(extra_attrs or {}),
        }
        group = self._open_existing(path, expected) if path.exists() else None
        if group is None:
            if not self._writable:
                return
            try:
                group = self._create(path, expected)
            except OSError as e:
                self._problem(f"Cannot create the embedding cache {path}: {e}", "using the in-memory cache only", e)
                return
        self._group = group
        self._group_path = path

    def _refuse_levels(self) -> None:
        message = (
            f"The embedding cache on disk ({self.cache_dir}) holds one feature array per image and keeps SAM 1 "
            "embeddings only; SAM 2.1 features (the image embedding and two high-resolution levels) are not "
            "written to disk yet"
        )
        if self.on_error == "raise":
            raise CacheError(f"{message}. Use a SAM 1 model to precompute a disk cache, or run SAM 2.1 without one.")
        if self._levels_refused:
            return  # said once per store
        self._levels_refused = True
        warnings.warn(f"{message}; they are kept in memory only.", CacheWarning, stacklevel=4)

    def _probe_writable(self) -> bool:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=self.cache_dir)
            os.close(fd)
            os.unlink(name)
            return True
        except OSError as e:
            self._problem(
                f"The embedding cache folder {self.cache_dir} cannot be written ({e})",
                "new embeddings are kept in memory only (complete entries already there are still read)",
                e,
            )
            return False

    def _open_existing(self, path: Path, expected: dict):
        import zarr

        mode = "r+" if self._writable else "r"
        why = None
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            attrs = dict(group.attrs.get(ATTRS_KEY) or {})
        except Exception as e:  # unreadable metadata: zarr raises many types here
            group, attrs, why = None, {}, f"its metadata cannot be read ({type(e).__name__}: {e})"
        if why is None:
            for key, value in expected.items():
                if attrs.get(key) != value:
                    shown = attrs.get(key, "<missing>")
                    if key == "signature" and isinstance(shown, dict):
                        diff = sorted(k for k in set(shown) | set(value) if shown.get(k) != value.get(k))
                        shown = f"differs in {diff}"
                    why = f"it was written with {key}={shown!r}, expected {value!r}"
                    break
        if why is None:
            try:
                feats, complete, _ = group["features"], group["complete"], group["pixels"]
                want = (expected["n_slices"], expected["n_tiles"])
                if tuple(feats.shape) != want + tuple(expected["feature_shape"]) or tuple(complete.shape) != want:
                    why = "its arrays have unexpected shapes"
            except Exception as e:
                why = f"its arrays cannot be opened ({type(e).__name__})"
        if why is None:
            return group
        action = "rebuilding it" if self._writable else "ignoring it (the folder is read-only)"
        warnings.warn(f"Embedding cache {path} is not usable: {why}; {action}.", CacheWarning, stacklevel=4)
        if self._writable:
            shutil.rmtree(path, ignore_errors=True)
        return None

    def _create(self, path: Path, attrs: dict):
        import zarr

        n_s, n_t = attrs["n_slices"], attrs["n_tiles"]
        fshape = tuple(attrs["feature_shape"])
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array("features", shape=(n_s, n_t, *fshape), chunks=(1, 1, *fshape), dtype=self.disk_dtype)
        group.create_array("complete", shape=(n_s, n_t), chunks=(1, 1), dtype="int64", fill_value=0)
        group.create_array("pixels", shape=(n_s, n_t, 2), chunks=(1, 1, 2), dtype="uint64", fill_value=0)
        group.attrs[ATTRS_KEY] = attrs
        try:
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not path.exists():
                raise
        return zarr.open_group(str(path), mode="r+", zarr_format=3)

    # ---- entries -----------------------------------------------------------------------------
    def _remember(self, key: tuple[int, int], emb: Embedding, pixels: bytes | None) -> None:
        self._memory_pixels[key] = pixels
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= old.nbytes
        self._memory[key] = emb
        self._memory_bytes += emb.nbytes
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            gone, dropped = self._memory.popitem(last=False)
            self._memory_pixels.pop(gone, None)
            self._memory_bytes -= dropped.nbytes

    def in_memory(self, slice_flat: int, tile_flat: int, pixels: bytes | None = None) -> bool:
        """Whether the entry is in memory (and, given ``pixels``, was computed from pixels of that hash)."""
        key = (int(slice_flat), int(tile_flat))
        return key in self._memory and (pixels is None or self._memory_pixels.get(key) == pixels)

    def _disk_pixels_match(self, key: tuple[int, int], pixels: bytes | None) -> bool:
        if pixels is None:
            return True
        try:
            return np.asarray(self._group["pixels"][key]).astype("<u8").tobytes() == pixels
        except Exception:
            return False

    def matches(self, slice_flat: int, tile_flat: int, pixels: bytes) -> bool:
        """Whether an entry computed from pixels of hash ``pixels`` is in memory or complete on disk."""
        key = (int(slice_flat), int(tile_flat))
        if self.in_memory(*key, pixels):
            return True
        return self.on_disk(*key) and self._disk_pixels_match(key, pixels)

    def on_disk(self, slice_flat: int, tile_flat: int) -> bool:
        """Whether a complete entry is on disk (its checksum is verified on :meth:`get`)."""
        if self._group is None:
            return False
        try:
            return int(self._group["complete"][int(slice_flat), int(tile_flat)]) != 0
        except Exception:
            return False

    def contains(self, slice_flat: int, tile_flat: int) -> bool:
        return self.in_memory(slice_flat, tile_flat) or self.on_disk(slice_flat, tile_flat)

    def complete_mask(self) -> np.ndarray | None:
        """(n_slices, n_tiles) bool of the complete entries on disk, or None without a disk group."""
        if self._group is None:
            return None
        try:
            return np.asarray(self._group["complete"][...]) != 0
        except Exception as e:
            warnings.warn(f"Embedding cache {self._group_path}: cannot read its markers ({e}).", CacheWarning)
            return None

    def get(self, slice_flat: int, tile_flat: int, pixels: bytes | None = None) -> Embedding | None:
        """The embedding of an entry from memory or disk, or None (absent, corrupt: then warned, or,
        given ``pixels``, computed from other pixels than those of that hash: stale)."""
        import torch

        key = (int(slice_flat), int(tile_flat))
        emb = self._memory.get(key)
        if emb is not None and (pixels is None or self._memory_pixels.get(key) == pixels):
            self._memory.move_to_end(key)
            return emb
        if self._group is None:
            return None
        try:
            marker = int(self._group["complete"][key])
        except Exception as e:
            self._corrupt(key, f"its marker cannot be read ({type(e).__name__})")
            return None
        if marker == 0 or not self._disk_pixels_match(key, pixels):
            return None
        try:
            data = np.asarray(self._group["features"][key])
        except Exception as e:
            self._corrupt(key, f"its chunk cannot be decoded ({type(e).__name__})")
            return None
        if zlib.crc32(np.ascontiguousarray(data).tobytes()) + 1 != marker:
            self._corrupt(key, "its checksum does not match")
            return None
        feats = torch.from_numpy(data.astype(np.float32))[None]
        emb = Embedding(feats, *self._sizes)
        self._remember(key, emb, pixels)
        return emb

    def _corrupt(self, key, why: str) -> None:
        warnings.warn(
            f"Embedding cache {self._group_path}: entry (slice {key[0]}, tile {key[1]}) is corrupt: {why}; "
            "recomputing it.",
            CacheWarning,
            stacklevel=3,
        )
        if self._writable and self._group is not None:
            try:
                self._group["complete"][key] = 0
            except Exception:
                pass

    def put(self, slice_flat: int, tile_flat: int, emb: Embedding, pixels: bytes | None = None) -> Embedding:
        """Store an embedding (memory, and disk when persistent); returns what later gets return.

        With a disk cache the features are rounded to ``disk_dtype`` also in memory,
        so results do not depend on whether an entry came from memory or disk.
        """
        import torch

        key = (int(slice_flat), int(tile_flat))
        if self._group is not None and self._writable:
            data = emb.features[0].detach().cpu().numpy().astype(self.disk_dtype)
            try:
                self._group["complete"][key] = 0  # an entry being replaced is never half-trusted
                self._group["features"][key] = data
                if pixels is not None:
                    self._group["pixels"][key] = np.frombuffer(pixels, "<u8")
                self._group["complete"][key] = zlib.crc32(np.ascontiguousarray(data).tobytes()) + 1
            except OSError as e:
                self._group = None
                self._problem(f"Cannot write to the embedding cache {self._group_path} ({e})",
                              "continuing with the in-memory cache only", e)
            emb = Embedding(torch.from_numpy(data.astype(np.float32))[None], emb.original_size, emb.input_size)
        self._remember(key, emb, pixels)
        return emb

    def info(self) -> dict[str, Any]:
        """A small summary: disk path, memory use and entry counts."""
        mask = self.complete_mask()
        return {
            "group": str(self._group_path) if self._group_path else None,
            "memory_entries": len(self._memory),
            "memory_bytes": self._memory_bytes,
            "disk_entries": int(mask.sum()) if mask is not None else 0,
        }
