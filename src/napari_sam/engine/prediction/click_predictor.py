"""The one interface the :class:`~napari_sam.engine.prediction.segmenter.Segmenter` talks to.

A click predictor embeds one image (a slice or a tile crop) and answers prompts on it in
SAM's (x, y) pixel order. Two classes satisfy it:

- :class:`~napari_sam.engine.prediction.predictor.SamPredictor` for SAM 1 models;
- :class:`~napari_sam.engine.sam2.click_predictor.SAM2ClickPredictor` for SAM 2.1 models
  (the computation of :class:`~napari_sam.engine.sam2.image_predictor.SAM2ImagePredictor`).

:func:`click_predictor` picks the one for a model. Everything above the Segmenter (the
controller, click-ahead, tiling, the embedding store) is the same for both.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .predictor import Embedding


@runtime_checkable
class ClickPredictor(Protocol):
    """Two-phase inference on one image at a time (see the module docstring).

    Attributes:
        options: the resolved :class:`~napari_sam.engine.models.device.InferenceOptions`.
        encoder_size: side of the model's square encoder input (the default tile side).
        feature_shape: (C, h, w) of :attr:`Embedding.features`.
        mask_input_size: (4h, 4w) of the low-resolution mask logits.
        embedding_bytes: float32 bytes of one :class:`Embedding` (all its feature levels).
    """

    options: Any

    @property
    def precision(self) -> str: ...

    @property
    def device(self) -> Any: ...

    @property
    def encoder_size(self) -> int: ...

    @property
    def feature_shape(self) -> tuple[int, int, int]: ...

    @property
    def mask_input_size(self) -> tuple[int, int]: ...

    @property
    def embedding_bytes(self) -> int: ...

    def resized_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h', w') of an (H, W) image inside the encoder input."""

    def set_image(self, image: np.ndarray, intensity_limits: tuple[float, float] | None = None) -> None: ...

    def get_embedding(self) -> Embedding: ...

    def set_embedding(self, embedding: Embedding) -> None: ...

    def reset_image(self) -> None: ...

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def predict_candidates(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                           multimask_output: bool = True) -> tuple[Any, np.ndarray, np.ndarray]: ...


def model_family(model: Any) -> str:
    """``"sam2"`` for a SAM 2.1 model, ``"sam"`` otherwise."""
    from ...model.sam2 import SAM2Model

    return "sam2" if isinstance(model, SAM2Model) else "sam"


def click_predictor(model: Any, precision: str | None = None) -> ClickPredictor:
    """The click predictor for ``model``: SAM 2.1 or SAM 1 (see the module docstring)."""
    if model_family(model) == "sam2":
        from ..sam2.click_predictor import SAM2ClickPredictor

        return SAM2ClickPredictor(model, precision=precision)
    from .predictor import SamPredictor

    return SamPredictor(model, precision=precision)
