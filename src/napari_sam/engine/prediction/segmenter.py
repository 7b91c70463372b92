"""``Segmenter``: a viewer-free scripting API in napari's (row, col) order.

It holds one model and one image (2D, or nD with 2D slices), computes slice
embeddings on demand and keeps them in an in-memory LRU (optionally backed by
a persistent zarr cache on disk), and answers prompts given as napari-order
coordinates. It is what the napari widget drives, and what users call from the
console, notebooks and clusters::

    seg = Segmenter()                        # the default model, best device
    seg.set_image(stack)                     # (Z, Y, X) numpy / dask / zarr
    mask = seg.segment(points=[(120, 80)], labels=[1], slice_index=10)

Coordinates: ``points`` are (row, col) pixels of the 2D slice; ``box`` is
(row0, col0, row1, col1). The engine's :class:`SamPredictor` uses SAM's
(x, y) order; the flip happens in :func:`napari_sam.model.transforms.rowcol_to_xy`.

Large slices are embedded tile by tile (:mod:`napari_sam.engine.prediction.tiling`), each
tile's crop normalised with the whole image's intensity limits; prompts are
routed to one tile or split across tiles and merged by
:mod:`napari_sam.engine.prediction.tiled_prediction` (see there for the rule, and for
``Prediction.tile`` / ``mask_input`` refinement on tiled slices).

Threads: every call is atomic (one re-entrant :attr:`Segmenter.lock` guards the
image, the tile grid, the predictor's embedding and the caches), so threads
may share one Segmenter to embed and predict on the same image. A thread that
called :meth:`Segmenter.set_image` and finds the image replaced by another
thread at its next call gets :class:`~napari_sam.errors.ConcurrentUseError`
instead of masks of the other image; an embedding generator whose image or
tiling is replaced mid-way stops with the same error. To switch images from
several threads, hold ``with seg.lock:`` around ``set_image`` and the calls
that follow, or give each thread its own Segmenter.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from ...errors import ConcurrentUseError, InvalidImageError, InvalidPromptError
from ..store.embedding_store import EmbeddingStore
from ..images.image_slices import ImageSlices, SliceIndex
from .click_predictor import click_predictor, model_family
from .predictor import Embedding
from ..progress import Progress, run_blocking
from .prompts import check_rowcol_prompts
from .tiled_prediction import Prediction, TiledEmbedding, predict_tiled
from .tiling import Tile, TileGrid, check_tiling, default_halo

def _resolve_model(model: Any, device):
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        from ..models.zoo import default_model_name, load_model

        return load_model(model if model is not None else default_model_name(), device=device)
    if device is not None:
        from ..models.device import resolve_device

        model = model.to(resolve_device(device))
    return model


def _architecture(model: Any) -> str:
    """The model's architecture name (``vit_b``, ``sam2.1_hiera_tiny``, ...) for the cache signature."""
    cfg = getattr(model, "cfg", None)
    if model_family(model) == "sam2" and cfg is not None:
        return f"{cfg.name}@{cfg.image_size}"
    return str(getattr(model, "model_type", type(model).__name__))


class Segmenter:
    """Prompt-based segmentation of 2D images and nD stacks, slice by slice, tile by tile.

    Args:
        model: a zoo name (e.g. ``"vit_b"``), a checkpoint path, a built ``Sam``,
            or ``None`` for the default model.
        device: ``"cuda"``, ``"mps"``, ``"cpu"`` or ``None`` (best available).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``None`` (device default); held by the
            predictor's :attr:`options` (hand them to anything else that runs this model).
        rgb: whether the last axis of images holds colour channels; ``None``
            guesses (last axis of length 3 or 4 on a >= 3D array).
        cache_size: how many slice embeddings (all tiles of a slice) to keep in memory.
        tile_shape: (rows, cols) of a tile, an int for square tiles, ``None`` for the
            model's input size (e.g. 1024 for vit_b), or ``"full"`` to never tile
            (the whole slice is downscaled into one embedding). Slices no larger than
            the tile shape are embedded whole either way.
        halo: (rows, cols) of overlap context around each tile's inner region, or an
            int; ``None`` is one eighth of the tile shape.
        cache_dir: folder of a persistent zarr embedding cache, or ``None`` (memory only).
            See :mod:`napari_sam.engine.store.embedding_store`.
        cache_bytes: bound of the in-memory cache in bytes (overrides ``cache_size``).
    """

    @property
    def options(self):
        """The predictor's :class:`~napari_sam.engine.models.device.InferenceOptions` (device, precision, compile)."""
        return self.predictor.options

    def __init__(
        self,
        model: Any = None,
        device: str | None = None,
        precision: str | None = None,
        rgb: bool | None = None,
        cache_size: int = 16,
        *,
        tile_shape: Any = None,
        halo: Any = None,
        cache_dir: Any = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.lock = threading.RLock()  # guards image, grid, predictor and caches (see the module docstring)
        self._generation = 0  # bumped by set_image / set_tiling
        self._set_by = threading.local()  # the generation this thread's own set_image produced
        self.model = _resolve_model(model, device)
        self.predictor = click_predictor(self.model, precision=precision)  # SAM 1 or SAM 2.1
        self.rgb = rgb
        self.cache_size = int(cache_size)
        self.cache_bytes = cache_bytes
        self._tile_setting = tile_shape
        self._halo_setting = halo
        self._validate_tiling_setting()
        self.store = EmbeddingStore(cache_dir, max_memory_bytes=self._memory_bound(1))
        self._src: ImageSlices | None = None
        self._image_id: str | None = None
        self._grid: TileGrid | None = None
        self._store_bound = False

    # ---- configuration -----------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """The model's square input size in pixels (the default tile side)."""
        return self.predictor.encoder_size

    @property
    def _feature_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one tile's image embedding."""
        return self.predictor.feature_shape

    def _tiling_for(self, hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        tile = self._tile_setting
        if isinstance(tile, str):
            tile = hw
        elif tile is None:
            tile = (self.input_size, self.input_size)
        halo = self._halo_setting
        return check_tiling(tile, default_halo(tile) if halo is None else halo)

    def _validate_tiling_setting(self) -> None:
        if isinstance(self._tile_setting, str) and self._tile_setting != "full":
            raise InvalidImageError(
                f"tile_shape must be (rows, cols), an int, None or 'full'; got {self._tile_setting!r}."
            )
        self._tiling_for((self.input_size, self.input_size))

    def set_tiling(self, tile_shape: Any = None, halo: Any = None) -> None:
        """Change the tile shape and halo (see the class arguments); forgets embeddings in memory."""
        with self.lock:
            own = getattr(self._set_by, "generation", None) == self._generation
            old = (self._tile_setting, self._halo_setting)
            self._tile_setting, self._halo_setting = tile_shape, halo
            try:
                self._validate_tiling_setting()
            except InvalidImageError:
                self._tile_setting, self._halo_setting = old
                raise
            if self._src is not None:
                self._setup_grid()
            self._generation += 1
            if own:
                self._set_by.generation = self._generation

    def _memory_bound(self, n_tiles: int) -> int:
        if self.cache_bytes is not None:
            return int(self.cache_bytes)
        per_tile = self.predictor.embedding_bytes  # float32 features, all levels
        return max(1, self.cache_size) * max(1, n_tiles) * per_tile

    # ---- image -------------------------------------------------------------------------------
    def set_image(
        self, image: Any, rgb: bool | None = None, image_id: str | None = None, *,
        axes: str | None = None, channel: Any = None,
    ) -> None:
        """Use ``image``: (..., H, W) or (..., H, W, C) numpy, dask or zarr array.

        A list/tuple of arrays (napari multiscale data) means its first, full-resolution level.
        Nothing is read or embedded yet; intensity limits for non-uint8 data are
        computed once over the whole array (sampled) on first use.

        Args:
            axes: one letter per axis (e.g. ``"czyx"``, ``"yxc"``), or None (from the shape where it is
                unambiguous); see :mod:`napari_sam.engine.images.channels`.
            channel: with a channel axis: the channel index, a list of indices (their mean) or
                ``"mean"``; required when there are several channels.
            image_id: identity of the data for grouping the disk cache; by default a fingerprint
                of sampled pixels, shape and dtype (:func:`~napari_sam.engine.store.fingerprint.image_fingerprint`).
                Whatever the group, a cached tile is reused only when the hash of exactly its
                pixels now matches the one recorded with it.
        """
        from ..images.channels import select_channels
        from ..images.image_slices import level0

        image, rgb_from_axes = select_channels(level0(image), axes, channel)
        if rgb is None:
            rgb = rgb_from_axes if rgb_from_axes is not None else self.rgb
        src = ImageSlices(image, rgb)
        with self.lock:
            self._src = src
            self._image_id = image_id
            self.predictor.reset_image()
            self._setup_grid()
            self._generation += 1
            self._set_by.generation = self._generation

    @property
    def generation(self) -> int:
        """A counter bumped by every ``set_image`` and ``set_tiling``: equal values mean the same image."""
        return self._generation

    def _check_own_image(self) -> None:
        """Refuse to answer a thread whose own image was replaced by another thread (call under the lock)."""
        mine = getattr(self._set_by, "generation", None)
        if mine is not None and mine != self._generation:
            raise ConcurrentUseError(
                "This Segmenter's image was replaced by another thread since this thread called set_image(), so "
                "the answer would be for the other image. Give each thread its own Segmenter, or hold "
                "'with segmenter.lock:' around set_image() and the calls that use it."
            )

    def _check_unchanged(self, generation: int) -> None:
        if generation != self._generation:
            raise ConcurrentUseError(
                "The image or tiling of this Segmenter changed while its embeddings were being computed; "
                "start the embedding again for the new image."
            )

    def _setup_grid(self) -> None:
        tile, halo = self._tiling_for(self.spatial_shape)
        self._grid = TileGrid(self.spatial_shape, tile, halo)
        self.store.max_memory_bytes = self._memory_bound(len(self._grid))
        self.store.clear_memory()
        self._store_bound = False

    @property
    def slices(self) -> ImageSlices:
        """The current image as :class:`~napari_sam.engine.images.image_slices.ImageSlices`."""
        if self._src is None:
            raise InvalidImageError("No image is set: call set_image() first.")
        return self._src

    @property
    def image(self) -> Any:
        return self.slices.array

    @property
    def tile_grid(self) -> TileGrid:
        """The :class:`TileGrid` of one slice (a single tile when the slice fits the tile shape)."""
        if self._grid is None:
            raise InvalidImageError("No image is set: call set_image() first.")
        return self._grid

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(H, W) of one 2D slice."""
        return self.slices.spatial_shape

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the non-spatial (slice) axes, e.g. (Z,) for a z-stack, () for 2D."""
        return self.slices.leading_shape

    @property
    def n_slices(self) -> int:
        return self.slices.n_slices

    def _slice_key(self, slice_index: SliceIndex) -> tuple[int, ...]:
        return self.slices.key(slice_index)

    def _flat(self, key: tuple[int, ...]) -> int:
        return self.slices.flat(key)

    def intensity_limits(self) -> tuple[float, float] | None:
        """(low, high) normalisation limits for the whole image (None for uint8)."""
        return self.slices.intensity_limits()

    def read_slice(self, slice_index: SliceIndex = None) -> np.ndarray:
        """The 2D slice (H, W) or (H, W, C) as a numpy array."""
        return self.slices.read_slice(self._slice_key(slice_index))

    def read_tile(self, slice_index: SliceIndex, tile: Tile) -> np.ndarray:
        """The crop of ``tile`` (rows, cols[, C]) of one slice; reads only that region."""
        return self.slices.read_tile(self._slice_key(slice_index), tile)

    # ---- embeddings --------------------------------------------------------------------------
    def _signature(self) -> dict:
        from ..store.fingerprint import image_fingerprint, model_fingerprint

        image_id = self._image_id or image_fingerprint(self.image, spatial_ndim=3 if self.slices.is_rgb else 2)
        limits = self.intensity_limits()
        g = self.tile_grid
        return {
            "image": image_id,
            "shape": [int(s) for s in self.image.shape],
            "dtype": np.dtype(self.image.dtype).str,
            "rgb": self.slices.is_rgb,
            "family": model_family(self.model),  # SAM 1 and SAM 2.1 entries never mix
            "model": _architecture(self.model),
            "weights": model_fingerprint(self.model),
            "precision": str(self.predictor.precision),
            "image_format": str(getattr(self.model, "image_format", "RGB")),
            "intensity_limits": None if limits is None else list(limits),  # exact ints for 64-bit integer data
            "tile_shape": list(g.tile_shape),
            "halo": list(g.halo),
            "grid_shape": list(g.grid_shape),
        }

    def _bind_store(self) -> EmbeddingStore:
        if not self._store_bound:
            g = self.tile_grid
            tile_hw = g.tiles[0].shape
            input_size = self.predictor.resized_size(tile_hw)
            self.store.open(
                self._signature() if self.store.cache_dir is not None else {},
                n_slices=self.n_slices,
                n_tiles=len(g),
                feature_shape=self._feature_shape,
                original_size=tile_hw,
                input_size=input_size,
                extra_attrs={"tile_grid": g.describe()},
                high_res_shapes=getattr(self.predictor, "high_res_shapes", ()),
            )
            self._store_bound = True
        return self.store

    def cache_info(self) -> dict:
        """Where the embeddings live: the disk group (or None), memory use and entry counts."""
        return self._bind_store().info()

    def _tile_pixels(self, key: tuple[int, ...], tile: Tile) -> tuple[np.ndarray, bytes]:
        """A tile's crop and the hash of exactly those pixels (the identity of its cached embedding)."""
        from ..store.fingerprint import pixel_hash

        crop = self.slices.read_tile(key, tile)
        return crop, pixel_hash(crop)

    def _has_tile(self, key: tuple[int, ...], tile: Tile) -> bool:
        with self.lock:
            _, pixels = self._tile_pixels(key, tile)
            return self._bind_store().matches(self._flat(key), self.tile_grid.flat_index(tile.index), pixels)

    def has_embedding(self, slice_index: SliceIndex = None) -> bool:
        """Whether every tile of the slice is embedded (in memory or complete in the disk cache)."""
        key = self._slice_key(slice_index)
        return all(self._has_tile(key, t) for t in self.tile_grid)

    def _compute_tile(self, key: tuple[int, ...], tile: Tile, crop: np.ndarray, pixels: bytes) -> Embedding:
        with self.lock:
            self.predictor.set_image(crop, intensity_limits=self.intensity_limits())
            emb = self.predictor.get_embedding()
            return self._bind_store().put(self._flat(key), self.tile_grid.flat_index(tile.index), emb, pixels)

    def tile_embedding(self, slice_index: SliceIndex, tile: Tile) -> Embedding:
        """The embedding of one tile of one slice (from the caches, or computed now)."""
        with self.lock:
            self._check_own_image()
            key = self._slice_key(slice_index)
            crop, pixels = self._tile_pixels(key, tile)
            emb = self._bind_store().get(self._flat(key), self.tile_grid.flat_index(tile.index), pixels)
            return emb if emb is not None else self._compute_tile(key, tile, crop, pixels)

    def embed(
        self, slice_index: SliceIndex = None
    ) -> Generator[Progress, None, Embedding | TiledEmbedding]:
        """Compute (or fetch) the embedding of one slice; a progress generator (one step per tile).

        Returns an :class:`Embedding` for an untiled slice, a :class:`TiledEmbedding` otherwise.
        """
        with self.lock:
            self._check_own_image()
            generation = self._generation
            key = self._slice_key(slice_index)
            grid = self.tile_grid
            store = self._bind_store()
        out: list[Embedding] = []
        label = f"slice {key}" if key else "image"
        for i, tile in enumerate(grid):
            with self.lock:
                self._check_unchanged(generation)
                crop, pixels = self._tile_pixels(key, tile)
                emb = store.get(self._flat(key), i, pixels)
            if emb is None:
                yield Progress(i, len(grid), f"embedding {label}" + (f" tile {tile.index}" if len(grid) > 1 else ""))
                with self.lock:
                    self._check_unchanged(generation)
                    emb = self._compute_tile(key, tile, crop, pixels)
            out.append(emb)
        yield Progress(len(grid), len(grid), "embedded")
        return out[0] if len(grid) == 1 else TiledEmbedding(grid, tuple(out))

    def ensure_embedding(self, slice_index: SliceIndex = None) -> Embedding | TiledEmbedding:
        """Blocking :meth:`embed`."""
        return run_blocking(self.embed(slice_index))

    def precompute(
        self, slice_indices: Sequence[int | Sequence[int]] | None = None
    ) -> Generator[Progress, None, int]:
        """Embed every tile of the given slices (default: all); a progress generator.

        Entries already in the caches are skipped, so an interrupted run resumes.
        Closing the generator cancels; every tile finished so far is kept (on disk
        when a ``cache_dir`` is set). Returns the number of tile embeddings computed.
        """
        with self.lock:
            self._check_own_image()
            generation = self._generation
            if slice_indices is None:
                keys = [self.slices.unflat(i) for i in range(self.n_slices)]
            else:
                keys = [self._slice_key(s) for s in slice_indices]
            grid = self.tile_grid
            store = self._bind_store()
        total = len(keys) * len(grid)
        done = computed = 0
        yield Progress(0, total, "precomputing embeddings")
        for key in keys:
            flat = self._flat(key)
            for i, tile in enumerate(grid):
                with self.lock:
                    self._check_unchanged(generation)
                    crop, pixels = self._tile_pixels(key, tile)
                    cached = store.matches(flat, i, pixels)
                    if not cached:
                        self._compute_tile(key, tile, crop, pixels)
                        computed += 1
                done += 1
                if not cached or done == total:
                    yield Progress(done, total, f"slice {key}" if key else "image")
        return computed

    # ---- prompts -----------------------------------------------------------------------------
    def predict(
        self,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        slice_index: SliceIndex = None,
        multimask: bool = True,
        tile: tuple[int, int] | None = None,
        lazy: bool = False,
    ) -> Prediction:
        """Predict candidate masks for prompts in (row, col) order on one slice.

        Args:
            points: (N, 2) (row, col).  labels: (N,) 1 positive / 0 negative
                (default: all positive).  box: (row0, col0, row1, col1).
            mask_input: (h, w) or (1, h, w) low-res logits from a previous Prediction.
            tile: on a tiled slice, the grid index of the tile to answer in (the
                ``Prediction.tile`` the ``mask_input`` came from); default: routed.
            lazy: give the masks as :class:`~napari_sam.engine.prediction.candidates.CandidateMasks`,
                each candidate upscaled to full size when first read (what a click needs: the
                shown candidate only); the masks are the same as with ``lazy=False``.
        Returns:
            A :class:`Prediction` with (M, H, W) masks of the whole slice.
        """
        with self.lock:  # the predictor holds one embedding at a time: set it and predict as one step
            self._check_own_image()
            key = self._slice_key(slice_index)
            grid = self.tile_grid
            pts, lab, bx = check_rowcol_prompts(points, labels, box, self.spatial_shape)
            if pts is None and bx is None and mask_input is None:
                raise InvalidPromptError("Give at least one prompt: points, a box or a mask input.")

            def predict_in(t: Tile, **prompts):
                self.predictor.set_embedding(self.tile_embedding(key, t))
                if lazy:
                    return self.predictor.predict_candidates(**prompts)
                return self.predictor.predict(**prompts)

            return predict_tiled(grid, predict_in, pts, lab, bx, mask_input, multimask, tile)

    def segment(
        self,
        points=None,
        labels=None,
        box=None,
        mask_input: np.ndarray | None = None,
        slice_index: SliceIndex = None,
        multimask: bool | None = None,
    ) -> np.ndarray:
        """The best-scored mask, (H, W) bool, for prompts in (row, col) order.

        ``multimask`` defaults to True for a single point (ambiguous) and False otherwise.
        """
        if multimask is None:
            n_points = 0 if points is None else len(np.atleast_2d(np.asarray(points)))
            multimask = n_points == 1 and box is None and mask_input is None
        return self.predict(points, labels, box, mask_input, slice_index, multimask).best_mask


__all__ = ["Prediction", "Segmenter", "TiledEmbedding"]
