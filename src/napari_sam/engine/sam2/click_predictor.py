"""``SAM2ClickPredictor``: SAM 2.1 behind the Segmenter's click-predictor interface.

The :class:`~napari_sam.engine.prediction.segmenter.Segmenter` (and so the napari widget's
click loop, tiling and embedding cache) talks to one small interface,
:class:`~napari_sam.engine.prediction.click_predictor.ClickPredictor`. This class gives it
for SAM 2.1 models; every number comes from
:class:`~napari_sam.engine.sam2.image_predictor.SAM2ImagePredictor` (same masks, scores and
low-resolution logits as calling it directly on the same image).

An :class:`~napari_sam.engine.prediction.predictor.Embedding` of a SAM 2.1 image holds the
image embedding (``features``, (1, C, S/16, S/16), with SAM 2.1's "no memory" embedding added,
as the image predictor uses it) and the two high-resolution levels (``high_res``,
(1, C/8, S/4, S/4) and (1, C/4, S/8, S/8)); ``input_size`` is (S, S): SAM 2 resizes every
image to its square input.

What SAM 2.1 does not do here (yet): reduced precision and int8 (it runs in fp32; asking for
another precision warns and uses fp32), ``torch.compile``, the SAM 1 decoder's prepared
first block (click-ahead still decodes ahead, with the plain decoder), the automatic
segmentation methods (they need a SAM 1 model and say so), and the disk embedding cache
(features are cached in memory; see :mod:`napari_sam.engine.store.embedding_store`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ...errors import ImageNotSetError, InvalidImageError, InvalidPromptError
from ...model.sam2 import SAM2Model
from ..images.normalize import to_uint8_rgb
from ..models.device import InferenceOptions
from ..prediction.candidates import CandidateMasks
from ..prediction.predictor import Embedding
from ..prediction.prompts import check_box, check_mask_input, check_points
from .image_predictor import SAM2ImagePredictor


class SAM2ClickPredictor:
    """Embed one image with a SAM 2.1 model, then predict masks per prompt ((x, y) pixels).

    Args:
        model: a :class:`~napari_sam.model.sam2.SAM2Model`.
        precision: ``None`` or ``"fp32"``; any other precision warns and runs in fp32.
    """

    def __init__(self, model: SAM2Model, precision: str | None = None) -> None:
        if not isinstance(model, SAM2Model):
            raise TypeError(f"SAM2ClickPredictor needs a SAM 2.1 model, got {type(model).__name__}.")
        self.model = model
        if precision is not None and str(precision).lower() not in ("fp32", "float32"):
            warnings.warn(
                f"SAM 2.1 models run in fp32 in napari-sam; precision {precision!r} is for SAM 1 models "
                "(using fp32).",
                RuntimeWarning,
                stacklevel=3,
            )
        self.options = InferenceOptions(model.device, "fp32", False)
        self._image = SAM2ImagePredictor(model)
        self._embedding: Embedding | None = None

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def encoder_size(self) -> int:
        return int(self.model.image_size)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        g = int(self.model.cfg.embedding_size)
        return (int(self.model.no_mem_embed.shape[-1]), g, g)

    @property
    def high_res_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(C, h, w) of each high-resolution level of an :class:`Embedding`."""
        c, g, _ = self.feature_shape
        return ((c // 8, 4 * g, 4 * g), (c // 4, 2 * g, 2 * g))

    @property
    def mask_input_size(self) -> tuple[int, int]:
        side = 4 * int(self.model.cfg.embedding_size)
        return (side, side)

    @property
    def embedding_bytes(self) -> int:
        return 4 * sum(int(np.prod(s)) for s in (self.feature_shape, *self.high_res_shapes))

    def resized_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        return (self.encoder_size, self.encoder_size)

    # ---- image phase -------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, intensity_limits: tuple[float, float] | None = None) -> None:
        """Embed ``image`` (H, W) or (H, W, C), any dtype napari-sam reads (normalised with
        ``intensity_limits`` when given, as SAM 1's predictor does)."""
        rgb = to_uint8_rgb(image, intensity_limits)
        self._image.set_image(rgb)
        embed, high_res, hw = self._image.get_features()
        s = self.encoder_size
        self._embedding = Embedding(embed, hw, (s, s), high_res=high_res)

    def get_embedding(self) -> Embedding:
        if self._embedding is None:
            raise ImageNotSetError("No image is set: call set_image() (or set_embedding()) before this.")
        return self._embedding

    def set_embedding(self, embedding: Embedding) -> None:
        """Use a cached :class:`Embedding` of this model instead of running the encoder."""
        want = ((1, *self.feature_shape), *((1, *h) for h in self.high_res_shapes))
        got = tuple(tuple(t.shape) for t in (embedding.features, *embedding.high_res))
        if got != want:
            raise InvalidImageError(
                f"Embedding with feature levels {got} does not fit this SAM 2.1 model (expects {want}); "
                "was it computed with another model?"
            )
        self._image.set_features(embedding.features, embedding.high_res, embedding.original_size)
        self._embedding = embedding

    def reset_image(self) -> None:
        self._image.reset_predictor()
        self._embedding = None

    # ---- prompt phase ------------------------------------------------------------------------
    def _checked(self, point_coords, point_labels, box, mask_input):
        emb = self.get_embedding()
        coords, labels = check_points(point_coords, point_labels, emb.original_size)
        boxes = check_box(box, emb.original_size)
        if boxes is not None and boxes.shape[0] != 1:
            raise InvalidPromptError("predict takes one box.")
        mask = check_mask_input(mask_input, self.mask_input_size)
        if coords is None and boxes is None and mask is None:
            raise InvalidPromptError("Give at least one prompt: points, a box or a mask input.")
        return coords, labels, None if boxes is None else boxes[0], mask

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """masks (M, H, W) bool, scores (M,), low-resolution logits (M, S/4, S/4), as
        :meth:`SAM2ImagePredictor.predict` gives them."""
        coords, labels, box, mask = self._checked(point_coords, point_labels, box, mask_input)
        masks, scores, low = self._image.predict(coords, labels, box, mask, multimask_output)
        return masks.astype(bool), scores, low  # the image predictor gives 0/1 floats, as Meta's does

    def predict_candidates(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                           multimask_output: bool = True) -> tuple[CandidateMasks, np.ndarray, np.ndarray]:
        """:meth:`predict` with the masks as :class:`CandidateMasks` (same values)."""
        masks, scores, low = self.predict(point_coords, point_labels, box, mask_input, multimask_output)
        return CandidateMasks(len(masks), masks.shape[1:], lambda k: masks[k]), scores, low
