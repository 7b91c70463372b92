"""``Segmenter``: a viewer-free scripting API in napari's (row, col) order.

It holds one model and one image (2D, or nD with 2D slices), computes slice
embeddings on demand and keeps them in an in-memory LRU, and answers prompts
given as napari-order coordinates. It is what the napari widget drives, and
what users call from the console, notebooks and clusters::

    seg = Segmenter()                        # the default model, best device
    seg.set_image(stack)                     # (Z, Y, X) numpy / dask / zarr
    mask = seg.segment(points=[(120, 80)], labels=[1], slice_index=10)

Coordinates: ``points`` are (row, col) pixels of the 2D slice; ``box`` is
(row0, col0, row1, col1). The engine's :class:`SamPredictor` uses SAM's
(x, y) order; the flip happens in :func:`napari_sam.model.transforms.rowcol_to_xy`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidImageError, InvalidPromptError
from ..model.transforms import rowcol_to_xy
from .normalize import intensity_range
from .predictor import Embedding, SamPredictor
from .progress import Progress, run_blocking


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt set on one 2D slice.

    Attributes:
        masks: (M, H, W) bool candidate masks (M = 3 with multimask, else 1).
        scores: (M,) float predicted IoU of each candidate.
        logits: (M, h, w) float32 low-resolution logits (feed one back as ``mask_input``).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    @property
    def best(self) -> int:
        """Index of the best-scored candidate."""
        return int(np.argmax(self.scores))

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[self.best]


def _resolve_model(model: Any, device, precision):
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        from .zoo import default_model_name, load_model

        return load_model(model if model is not None else default_model_name(), device=device, precision=precision)
    if device is not None:
        from .device import resolve_device

        model = model.to(resolve_device(device))
    return model


class Segmenter:
    """Prompt-based segmentation of 2D images and nD stacks, slice by slice.

    Args:
        model: a zoo name (e.g. ``"vit_b"``), a checkpoint path, a built ``Sam``,
            or ``None`` for the default model.
        device: ``"cuda"``, ``"mps"``, ``"cpu"`` or ``None`` (best available).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``None`` (device default).
        rgb: whether the last axis of images holds colour channels; ``None``
            guesses (last axis of length 3 or 4 on a >= 3D array).
        cache_size: how many slice embeddings to keep in memory.
    """

    def __init__(
        self,
        model: Any = None,
        device: str | None = None,
        precision: str | None = None,
        rgb: bool | None = None,
        cache_size: int = 16,
    ) -> None:
        self.model = _resolve_model(model, device, precision)
        self.predictor = SamPredictor(self.model, precision=precision)
        self.rgb = rgb
        self.cache_size = int(cache_size)
        self._embeddings: OrderedDict[tuple[int, ...], Embedding] = OrderedDict()
        self._image = None
        self._limits: tuple[float, float] | None = None
        self._is_rgb = False

    # ---- image -------------------------------------------------------------------------------
    def set_image(self, image: Any, rgb: bool | None = None) -> None:
        """Use ``image``: (..., H, W) or (..., H, W, C) numpy, dask or zarr array.

        Nothing is read or embedded yet; intensity limits for non-uint8 data
        are computed once over the whole array (sampled) on first use.
        """
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) < 2:
            raise InvalidImageError(f"Image of shape {shape} has fewer than 2 dimensions; expected at least (H, W).")
        if 0 in shape:
            raise InvalidImageError(f"Image of shape {shape} is empty.")
        rgb = self.rgb if rgb is None else rgb
        if rgb is None:
            rgb = len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4
        if rgb and shape[-1] not in (3, 4):
            raise InvalidImageError(f"rgb=True but the last axis has length {shape[-1]} (expected 3 or 4).")
        self._image = image
        self._is_rgb = bool(rgb)
        self._limits = None
        self._embeddings.clear()
        self.predictor.reset_image()

    @property
    def image(self) -> Any:
        if self._image is None:
            raise InvalidImageError("No image is set: call set_image() first.")
        return self._image

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(H, W) of one 2D slice."""
        shape = self.image.shape
        return tuple(shape[-3:-1]) if self._is_rgb else tuple(shape[-2:])

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the non-spatial (slice) axes, e.g. (Z,) for a z-stack, () for 2D."""
        shape = self.image.shape
        return tuple(shape[:-3]) if self._is_rgb else tuple(shape[:-2])

    def _slice_key(self, slice_index: int | Sequence[int] | None) -> tuple[int, ...]:
        lead = self.leading_shape
        if slice_index is None:
            if lead and int(np.prod(lead)) > 1:
                raise InvalidPromptError(
                    f"The image has slice axes of shape {lead}; pass slice_index= to say which 2D slice."
                )
            return tuple(0 for _ in lead)
        key = (int(slice_index),) if np.isscalar(slice_index) else tuple(int(i) for i in slice_index)
        if len(key) != len(lead) or any(not 0 <= k < n for k, n in zip(key, lead)):
            raise InvalidPromptError(f"slice_index {slice_index} is not valid for slice axes of shape {lead}.")
        return key

    def intensity_limits(self) -> tuple[float, float] | None:
        """(low, high) normalisation limits for the whole image (None for uint8)."""
        if np.dtype(self.image.dtype) == np.uint8:
            return None
        if self._limits is None:
            self._limits = intensity_range(self._sample_for_limits())
        return self._limits

    def _sample_for_limits(self, max_slices: int = 8) -> np.ndarray:
        lead = self.leading_shape
        n = int(np.prod(lead)) if lead else 1
        picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).astype(int))
        slices = [np.asarray(self.image[np.unravel_index(i, lead)] if lead else self.image) for i in picks]
        return np.stack(slices)

    def read_slice(self, slice_index: int | Sequence[int] | None = None) -> np.ndarray:
        """The 2D slice (H, W) or (H, W, C) as a numpy array."""
        key = self._slice_key(slice_index)
        return np.asarray(self.image[key] if key else self.image)

    # ---- embeddings --------------------------------------------------------------------------
    def has_embedding(self, slice_index: int | Sequence[int] | None = None) -> bool:
        return self._slice_key(slice_index) in self._embeddings

    def embed(self, slice_index: int | Sequence[int] | None = None) -> Generator[Progress, None, Embedding]:
        """Compute (or fetch) the embedding of one slice; a progress generator."""
        key = self._slice_key(slice_index)
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        yield Progress(0, 1, f"embedding slice {key}" if key else "embedding image")
        self.predictor.set_image(self.read_slice(slice_index), intensity_limits=self.intensity_limits())
        emb = self.predictor.get_embedding()
        self._remember(key, emb)
        yield Progress(1, 1, "embedded")
        return emb

    def _remember(self, key: tuple[int, ...], emb: Embedding) -> None:
        self._embeddings[key] = emb
        self._embeddings.move_to_end(key)
        while len(self._embeddings) > max(1, self.cache_size):
            self._embeddings.popitem(last=False)

    def ensure_embedding(self, slice_index: int | Sequence[int] | None = None) -> Embedding:
        """Blocking :meth:`embed`."""
        return run_blocking(self.embed(slice_index))

    # ---- prompts -----------------------------------------------------------------------------
    def predict(
        self,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        slice_index: int | Sequence[int] | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Predict candidate masks for prompts in (row, col) order on one slice.

        Args:
            points: (N, 2) (row, col).  labels: (N,) 1 positive / 0 negative
                (default: all positive).  box: (row0, col0, row1, col1).
            mask_input: (h, w) or (1, h, w) low-res logits from a previous Prediction.
        """
        emb = self.ensure_embedding(slice_index)
        self.predictor.set_embedding(emb)
        coords = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float64)
            if pts.ndim == 1 and pts.shape == (2,):
                pts = pts[None]
            if pts.ndim != 2 or pts.shape[-1] != 2:
                raise InvalidPromptError(f"points must have shape (N, 2) as (row, col); got {pts.shape}.")
            coords = rowcol_to_xy(pts)
            if labels is None:
                labels = np.ones(len(pts), dtype=np.int64)
        elif labels is not None:
            raise InvalidPromptError("labels were given without points.")
        xy_box = None
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.shape != (4,):
                raise InvalidPromptError(f"box must be (row0, col0, row1, col1); got shape {b.shape}.")
            xy_box = np.array([b[1], b[0], b[3], b[2]])
        masks, scores, logits = self.predictor.predict(
            point_coords=coords,
            point_labels=None if labels is None else np.asarray(labels),
            box=xy_box,
            mask_input=mask_input,
            multimask_output=multimask,
        )
        return Prediction(masks, scores, logits)

    def segment(
        self,
        points=None,
        labels=None,
        box=None,
        mask_input: np.ndarray | None = None,
        slice_index: int | Sequence[int] | None = None,
        multimask: bool | None = None,
    ) -> np.ndarray:
        """The best-scored mask, (H, W) bool, for prompts in (row, col) order.

        ``multimask`` defaults to True for a single point (ambiguous) and False otherwise.
        """
        if multimask is None:
            n_points = 0 if points is None else len(np.atleast_2d(np.asarray(points)))
            multimask = n_points == 1 and box is None and mask_input is None
        return self.predict(points, labels, box, mask_input, slice_index, multimask).best_mask
