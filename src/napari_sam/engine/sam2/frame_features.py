"""Per-frame SAM 2.1 image features kept in napari-sam's embedding store for reuse.

The video predictor asks :class:`FrameFeatures` for a frame's
:class:`~napari_sam.model.sam2.sam2.ImageFeatures`; they come from the store when this
model's weights already encoded exactly these pixels, else the image encoder runs and the
result is stored. The store is an
:class:`~napari_sam.engine.store.embedding_store.EmbeddingStore` (memory LRU bounded in
bytes; SAM 2.1 features are never written to disk), one entry per frame index: an
:class:`~napari_sam.engine.prediction.predictor.Embedding` with the stride-16 features and
the two high-resolution levels. Its identity is the hash of the weights' fingerprint and of
exactly the frame's 8-bit RGB pixels (what the encoder reads), so a store shared by several
models or sequences, or weights fine-tuned in place (re-fingerprinted at each :meth:`bind`),
never serve features of other pixels or weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...model.sam2.sam2 import ImageFeatures
from .frames import FrameSource, rgb_model_input

#: default bound of a video predictor's feature store (16 frames of a 1024 px model: 16 MiB each,
#: 256 frames at 256 px).
FEATURE_CACHE_BYTES = 256 * 2**20


class FrameFeatures:
    """Frame features of one SAM 2.1 model through an embedding store (see the module docstring).

    Args:
        model: the :class:`~napari_sam.model.sam2.SAM2Model`.
        store: an :class:`~napari_sam.engine.store.embedding_store.EmbeddingStore`, or None for a new
            memory-only one bounded to :data:`FEATURE_CACHE_BYTES`.
    """

    def __init__(self, model: Any, store: Any = None) -> None:
        if store is None:
            from ..store.embedding_store import EmbeddingStore

            store = EmbeddingStore(None, max_memory_bytes=FEATURE_CACHE_BYTES)
        self.model = model
        self.store = store
        self.encoded = 0  # image-encoder passes
        self._pos: torch.Tensor | None = None  # the position encoding: the same for every frame
        self.bind()

    def bind(self) -> None:
        """Fingerprint the weights (and open the store, memory only, on first use)."""
        from ..store.fingerprint import model_fingerprint

        m = self.model
        self._weights = f"{m.cfg.name}@{m.image_size}:{model_fingerprint(m)}".encode()
        if self.store.signature is None:
            c, g = int(m.no_mem_embed.shape[-1]), int(m.cfg.embedding_size)
            self.store.open({"family": "sam2-video"}, n_slices=0, n_tiles=1, feature_shape=(c, g, g),
                            original_size=(0, 0), input_size=(m.image_size, m.image_size),
                            high_res_shapes=((c // 8, 4 * g, 4 * g), (c // 4, 2 * g, 2 * g)))

    def get(self, frames: FrameSource, index: int, device: torch.device) -> ImageFeatures:
        """Frame ``index``'s features: stored ones when these weights encoded these pixels, else encoded now."""
        from ..prediction.predictor import Embedding
        from ..store.fingerprint import pixel_hash

        m = self.model
        rgb = frames.rgb(index)
        key = pixel_hash(np.frombuffer(self._weights + pixel_hash(rgb), np.uint8))
        emb = self.store.get(index, 0, key)
        if emb is not None and self._pos is not None:
            return ImageFeatures([t.to(device) for t in emb.high_res], emb.features.to(device), self._pos.to(device))
        x = rgb_model_input(rgb, m.image_size, m.cfg.pixel_mean, m.cfg.pixel_std)
        feats = m.forward_image(x[None].to(device))
        self.encoded += 1
        self._pos = feats.pos
        self.store.put(index, 0, Embedding(feats.embed, tuple(rgb.shape[:2]), (m.image_size,) * 2,
                                           high_res=tuple(feats.high_res)), key)
        return feats
