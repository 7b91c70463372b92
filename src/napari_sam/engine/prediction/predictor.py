"""``SamPredictor``: compute an image embedding once, then predict masks per prompt.

Same call signature and return values as the reference
``segment_anything.SamPredictor``; coordinates are (x, y) pixels of the
original image. Beyond the reference it accepts grayscale, RGB and RGBA images
of uint8, uint16 and float dtypes (see :mod:`napari_sam.engine.images.normalize`),
validates prompts with clear errors (:mod:`napari_sam.engine.prediction.prompts`), runs
the encoder in an optional reduced precision, and can be given a precomputed
embedding instead of running the encoder (:meth:`set_embedding`).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from ...errors import DeviceError, ImageNotSetError, InvalidImageError, InvalidParameterError, InvalidPromptError
from ...model.kernels.decoder_attention import PreparedImage
from ...model.mask_decoder import MaskDecoder, upscale_masks
from ...model.sam import Sam
from ...model.transforms import ResizeLongestSide
from .allocator import tune_allocator
from ..models.device import InferenceOptions, compile_module
from .candidates import CandidateMasks
from ..images.normalize import to_uint8_rgb
from .prompts import check_box, check_mask_input, check_points


@dataclass(frozen=True)
class Embedding:
    """An image embedding and the geometry needed to use it.

    Attributes:
        features: (1, C, h, w) float32 tensor (C = 256 for the published models).
        original_size: (H, W) of the image the prompts refer to.
        input_size: (h', w') of the resized image inside the padded encoder input.
        high_res: further feature levels the decoder reads: empty for SAM 1; for SAM 2.1 the
            two high-resolution levels (1, C/8, 4h, 4w) and (1, C/4, 2h, 2w), float32.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res: tuple[torch.Tensor, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of all its feature tensors."""
        return sum(t.numel() * t.element_size() for t in (self.features, *self.high_res))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class SamPredictor:
    """Two-phase SAM inference: :meth:`set_image` once, :meth:`predict` per prompt."""

    def __init__(
        self,
        sam_model: Sam,
        precision: str | None = None,
        compile: bool | None = None,
        *,
        options: InferenceOptions | None = None,
    ) -> None:
        """Args:
            sam_model: the model (its device is used).
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the image encoder and the mask
                decoder's products with the image tokens (:attr:`decoder_dtype`), or ``"int8"``
                (CPU only: the encoder's linear layers in dynamic int8, the decoder fp32); ``None`` means
                ``NAPARI_SAM_PRECISION``, else the device's default
                (:func:`napari_sam.engine.models.device.default_precision`). Unsupported choices
                fall back with a warning.
            compile: compile the image encoder with ``torch.compile`` on first use (opt-in; ``None``
                reads ``NAPARI_SAM_COMPILE=1``). Falls back to eager with a warning if compiling fails.
            options: resolved :class:`~napari_sam.engine.models.device.InferenceOptions` instead of
                ``precision``/``compile`` (their device must be the model's).
        """
        from ...model.sam2 import SAM2Model

        if isinstance(sam_model, SAM2Model):
            raise InvalidParameterError(
                f"{sam_model.cfg.name} is a SAM 2.1 model: SamPredictor, and the automatic segmentation built on "
                f"it, run SAM 1 models. For SAM 2.1 use napari_sam.SAM2ImagePredictor, SAM2VideoPredictor or "
                f"the Segmenter (clicks); for automatic segmentation pick a SAM 1 model (e.g. the bundled 'tiny')."
            )
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        if options is None:
            options = InferenceOptions.resolve(self.device, precision, compile)
        elif precision is not None or compile is not None:
            raise DeviceError("Give either options or precision/compile, not both.")
        elif not _same_device(options.device, self.device):
            raise DeviceError(
                f"The inference options are for device {options.device} but the model is on {self.device}; "
                "move the model (model.to(device)) or resolve the options for its device."
            )
        self.options = options
        self._compiled_encoder = None
        self._int8_encoder: torch.nn.Module | None = None
        if self.device.type == "cpu":
            tune_allocator()  # reuse freed tensors instead of fresh pages (see engine/prediction/allocator.py)
        self.reset_image()

    @property
    def precision(self) -> str:
        """The resolved precision (``self.options.precision``)."""
        return self.options.precision

    @property
    def compile(self) -> bool:
        """Whether the encoder is compiled (``self.options.compile``; False after a failed compile)."""
        return self.options.compile

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- the click-predictor interface (engine/prediction/click_predictor.py) ----------------
    @property
    def encoder_size(self) -> int:
        """Side of the square encoder input (e.g. 1024)."""
        return int(self.model.image_encoder.img_size)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image embedding."""
        pe = self.model.prompt_encoder
        return (int(pe.embed_dim), *map(int, pe.image_embedding_size))

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(4h, 4w) of the low-resolution mask logits the decoder takes and gives."""
        return tuple(int(s) for s in self.model.prompt_encoder.mask_input_size)

    @property
    def embedding_bytes(self) -> int:
        """float32 bytes of one :class:`Embedding`."""
        return 4 * int(np.prod(self.feature_shape))

    def resized_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h', w') of an (H, W) image inside the padded encoder input."""
        from ...model.transforms import get_preprocess_shape

        return get_preprocess_shape(int(hw[0]), int(hw[1]), self.encoder_size)

    @property
    def decoder_dtype(self) -> torch.dtype | None:
        """The dtype of the mask decoder's image-side products (``None``: fp32, exact).

        With reduced precision, the decoder's h*w image tokens, every product with them
        and its upscaling are bf16/fp16; the prompt tokens and every returned logit and
        IoU stay fp32.
        """
        return self.options.autocast_dtype

    # ---- image phase -------------------------------------------------------------------------
    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        intensity_limits: tuple[float, float] | None = None,
    ) -> None:
        """Compute the embedding of ``image``.

        Args:
            image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8, uint16 or float.
                uint8 RGB is used as is (exactly like the reference).
            image_format: ``"RGB"`` or ``"BGR"`` channel order of a 3-channel image.
            intensity_limits: (low, high) for non-uint8 images, to normalise with
                limits computed over a whole stack or a whole large image.
        """
        if image_format not in ("RGB", "BGR"):
            raise InvalidImageError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        rgb = to_uint8_rgb(image, intensity_limits)
        if image_format != self.model.image_format:
            rgb = rgb[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(rgb))
        t = torch.as_tensor(np.array(input_image), device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(t, rgb.shape[:2])

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed a (1, 3, h, w) image already resized so its longest side is the model's input size."""
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != self.model.image_encoder.img_size
        ):
            raise InvalidImageError(
                f"set_torch_image expects (1, 3, h, w) with longest side {self.model.image_encoder.img_size}; "
                f"got {tuple(transformed_image.shape)}."
            )
        self.reset_image()
        features = self.encode(transformed_image)
        self._embedding = Embedding(
            features, tuple(int(s) for s in original_image_size), tuple(int(s) for s in transformed_image.shape[-2:])
        )

    def encode(self, transformed_image: torch.Tensor) -> torch.Tensor:
        """Run the image encoder on resized (B, 3, h, w) pixels; returns float32 (B, C, h', w').

        Reduced precision runs under ``torch.autocast`` (matmuls, convolutions and
        attention in bf16/fp16; normalisation in fp32), so the model's weights stay fp32.
        """
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        dtype = self.options.autocast_dtype
        ctx = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), ctx:
            if self.precision == "int8":
                return self._int8_image_encoder()(x).float()
            if self.compile:
                out = self._run_compiled(x)
                if out is not None:
                    return out.float()
            return self.model.image_encoder(x).float()

    def _int8_image_encoder(self) -> torch.nn.Module:
        """A copy of the image encoder with int8 linear layers, made on first use (:mod:`..models.int8`)."""
        if self._int8_encoder is None:
            from ..models.int8 import quantize_encoder

            self._int8_encoder = quantize_encoder(self.model.image_encoder)
        return self._int8_encoder

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor | None:
        """The compiled encoder's output, or ``None`` (after one warning) if compiling fails."""
        try:
            if self._compiled_encoder is None:
                self._compiled_encoder = compile_module(self.model.image_encoder)
            return self._compiled_encoder(x)
        except Exception as e:  # noqa: BLE001  (any compiler failure: fall back to eager)
            warnings.warn(
                f"torch.compile of the image encoder failed ({type(e).__name__}: {e}); "
                "falling back to eager mode.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.options = replace(self.options, compile=False)
            self._compiled_encoder = None
            return None

    def set_embedding(self, embedding: Embedding | torch.Tensor | np.ndarray, original_size=None, input_size=None) -> None:
        """Use a precomputed embedding instead of running the encoder.

        Either an :class:`Embedding`, or features (1, C, h, w) / (C, h, w) plus
        ``original_size`` (H, W) and ``input_size`` (h', w').
        """
        if not isinstance(embedding, Embedding):
            if original_size is None or input_size is None:
                raise InvalidImageError("set_embedding needs original_size and input_size with raw features.")
            feats = torch.as_tensor(np.asarray(embedding) if not torch.is_tensor(embedding) else embedding)
            if feats.ndim == 3:
                feats = feats[None]
            embedding = Embedding(feats, tuple(map(int, original_size)), tuple(map(int, input_size)))
        grid = self.model.prompt_encoder.image_embedding_size
        expected = (1, self.model.prompt_encoder.embed_dim, *grid)
        if tuple(embedding.features.shape) != expected:
            raise InvalidImageError(
                f"Embedding of shape {tuple(embedding.features.shape)} does not fit this model (expects {expected}); "
                "was it computed with another model?"
            )
        self._embedding = Embedding(
            embedding.features.to(self.device, torch.float32), embedding.original_size, embedding.input_size
        )

    def get_embedding(self) -> Embedding:
        """The current :class:`Embedding` (features with geometry)."""
        if self._embedding is None:
            raise ImageNotSetError("No image is set: call set_image() (or set_embedding()) before this.")
        return self._embedding

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, C, h, w) image embedding of the current image."""
        return self.get_embedding().features

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self._embedding: Embedding | None = None
        self._decoder_features: tuple[torch.Tensor, int | None, torch.Tensor] | None = None
        self._prepared: tuple[tuple, PreparedImage] | None = None

    def _features_for_decoder(self, emb: Embedding) -> torch.Tensor:
        """``emb.features`` in channels-last memory and the decoder's dtype, made once per features tensor.

        The decoder works on (h*w, C) image tokens; from channels-last storage that
        view needs no copy, so no click re-lays-out (or re-casts) the 4 MB embedding.
        Keyed by the tensor itself (and its version counter), not the Embedding: the
        Segmenter hands the predictor the same cached tensor in a new Embedding on every click.
        """
        f = emb.features
        version = None if f.is_inference() else f._version  # inference tensors have no version counter
        cached = self._decoder_features
        if cached is None or cached[0] is not f or cached[1] != version:
            laid_out = f.to(self.decoder_dtype or f.dtype).contiguous(memory_format=torch.channels_last)
            self._decoder_features = cached = (f, version, laid_out)
        return cached[2]

    @property
    def _prepares(self) -> bool:
        """Whether the decoder is this package's own (not one replaced on the instance), so it takes ``prepared``."""
        dec = self.model.mask_decoder
        return type(dec) is MaskDecoder and "forward" not in vars(dec) and "forward" not in vars(dec.transformer)

    def _prepared_image(self, features: torch.Tensor) -> PreparedImage:
        """The mask decoder's prompt-independent first-block image side for clicks without a mask
        input (:meth:`MaskDecoder.prepare_image`), made once per decoder features tensor.

        Keyed by that tensor (see :meth:`_features_for_decoder`) and by the version of every
        weight it is computed from, so neither a new embedding nor weights changed in place
        (fine-tuning, ``load_state_dict``) ever reuses a stale one.
        """
        model = self.model
        weights = (model.prompt_encoder.no_mask_embed.weight, model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
                   *model.mask_decoder.transformer.layers[0].parameters())
        key = (features, torch.is_inference_mode_enabled(), *((w.data_ptr(), w._version) for w in weights))
        cached = self._prepared
        if cached is None or len(cached[0]) != len(key) or cached[0][0] is not features or cached[0][1:] != key[1:]:
            h, w = model.prompt_encoder.image_embedding_size
            dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
            prepared = model.mask_decoder.prepare_image(
                features, model.prompt_encoder.get_dense_pe(self.decoder_dtype), dense, self.decoder_dtype
            )
            self._prepared = cached = (key, prepared)
        return cached[1]

    def decoder_features(self) -> torch.Tensor:
        """The current embedding as the mask decoder reads it: (1, C, h, w) channels-last, in
        :attr:`decoder_dtype` (fp32 when that is None); made once per image and shared by every
        prompt batch (clicks, boxes, automatic segmentation)."""
        return self._features_for_decoder(self.get_embedding())

    # reference-compatible attributes
    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def features(self) -> torch.Tensor:
        return self.get_image_embedding()

    @property
    def original_size(self) -> tuple[int, int]:
        return self.get_embedding().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self.get_embedding().input_size

    # ---- prompt phase ------------------------------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts in the original image's (x, y) pixel frame.

        Args:
            point_coords: (N, 2) float (x, y).  point_labels: (N,) 1 = positive, 0 = negative.
            box: (4,) x0, y0, x1, y1.  mask_input: (1, 4h, 4w) low-res logits from a previous call.
        Returns:
            masks (M, H, W) bool (float logits with ``return_logits``), iou_predictions (M,),
            low_res_logits (M, 4h, 4w); M = 3 with ``multimask_output`` else 1.
        """
        coords_t, labels_t, box_t, mask_t = self._prompt_tensors(point_coords, point_labels, box, mask_input)
        masks, iou, low_res = self.predict_torch(coords_t, labels_t, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def predict_candidates(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[CandidateMasks, np.ndarray, np.ndarray]:
        """:meth:`predict`, with each full-size mask upscaled only when it is first read.

        Returns:
            masks (M, H, W) bool as :class:`CandidateMasks` (``masks[k]`` equals
            ``predict(...)[0][k]``), iou_predictions (M,), low_res_logits (M, 4h, 4w).
        """
        emb = self.get_embedding()
        prompts = self._prompt_tensors(point_coords, point_labels, box, mask_input)
        with torch.inference_mode():
            iou, low_res = self._decode(emb, *prompts, multimask_output)
        img_size, threshold = self.model.image_encoder.img_size, self.model.mask_threshold

        def make(k: int) -> np.ndarray:
            with torch.inference_mode():
                m = upscale_masks(low_res[:, k : k + 1], img_size, emb.input_size, emb.original_size, threshold)
            return m[0, 0].cpu().numpy()

        masks = CandidateMasks(low_res.shape[1], emb.original_size, make)
        return masks, iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def _prompt_tensors(self, point_coords, point_labels, box, mask_input) -> tuple:
        """Validated numpy prompts in the original (x, y) frame -> model-frame tensors for :meth:`predict_torch`."""
        emb = self.get_embedding()
        coords, labels = check_points(point_coords, point_labels, emb.original_size)
        boxes = check_box(box, emb.original_size)
        if boxes is not None and boxes.shape[0] != 1:
            raise InvalidPromptError("predict takes one box; use predict_torch for a batch of boxes.")
        mask = check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
        if coords is None and boxes is None and mask is None:
            raise InvalidPromptError("Give at least one prompt: points, a box or a mask input.")

        coords_t = labels_t = box_t = mask_t = None
        if coords is not None:
            c = self.transform.apply_coords(coords, emb.original_size)
            coords_t = torch.as_tensor(c, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if boxes is not None:
            box_t = torch.as_tensor(self.transform.apply_boxes(boxes, emb.original_size), dtype=torch.float, device=self.device)
        if mask is not None:
            mask_t = torch.as_tensor(mask, dtype=torch.float, device=self.device)[None]
        return coords_t, labels_t, box_t, mask_t

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the model's input frame.

        Args:
            point_coords: (B, N, 2) (x, y), transformed with ``self.transform``.
            point_labels: (B, N).  boxes: (B, 4).  mask_input: (B, 1, 4h, 4w).
        Returns:
            masks (B, M, H, W), iou_predictions (B, M), low_res_logits (B, M, 4h, 4w).
        """
        emb = self.get_embedding()
        iou, low_res = self._decode(emb, point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = upscale_masks(
            low_res,
            self.model.image_encoder.img_size,
            emb.input_size,
            emb.original_size,
            threshold=None if return_logits else self.model.mask_threshold,
        )
        return masks, iou, low_res

    def _decode(self, emb: Embedding, point_coords, point_labels, boxes, mask_input, multimask_output: bool):
        """Prompt encoder and mask decoder: iou (B, M) and low-res logits (B, M, 4h, 4w)."""
        if point_coords is not None:
            if point_labels is None or point_coords.shape[:2] != point_labels.shape[:2] or point_coords.shape[-1] != 2:
                raise InvalidPromptError(
                    "point_coords (B, N, 2) and point_labels (B, N) must be given together with matching shapes."
                )
            points = (point_coords, point_labels)
        else:
            points = None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        features = self._features_for_decoder(emb)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=features,
            image_pe=self.model.prompt_encoder.get_dense_pe(self.decoder_dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            compute_dtype=self.decoder_dtype,
            # without a mask input the first block's image side is the same for every prompt
            **({"prepared": self._prepared_image(features)} if mask_input is None and self._prepares else {}),
        )
        return iou, low_res
