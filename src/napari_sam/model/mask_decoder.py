"""SAM's mask decoder: two-way transformer, upscaling and hypernetwork heads.

``MaskDecoder.masks_from`` and :func:`upscale_masks` are the plain formulation; their fast
kernels are in ``kernels/mask_head.py`` and ``kernels/mask_upscaling.py`` and run unless
:func:`~napari_sam.model.kernels.use_reference_paths` is active.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d, check_compute_dtype
from .kernels import fast_path, mask_head, mask_upscaling
from .kernels.decoder_attention import PreparedImage
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        compute_dtype: torch.dtype | None = None,
        prepared: PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, K, C).
            dense_prompt_embeddings: (B, C, h, w).
            compute_dtype: dtype of the image tokens in the transformer, of every product with
                them and of the upscaling (e.g. ``torch.bfloat16``); ``None``: the inputs' dtype.
                The prompt tokens and both outputs keep the prompts' dtype.
            prepared: :meth:`prepare_image` of this (batch-1) image, pe and dense embedding, made once
                for many prompts on one image (the first block's image side is then not projected again).
        Returns:
            low-res mask logits (B, M, 4h, 4w) and IoU predictions (B, M),
            M = 3 with ``multimask_output`` else 1.
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, sl, compute_dtype, prepared
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        which: slice = slice(None),
        compute_dtype: torch.dtype | None = None,
        prepared: PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, M, 4h, 4w) and IoU predictions (B, M) of the mask tokens ``which`` (default: all)."""
        tokens, src = self.attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, compute_dtype, prepared
        )
        h, w = image_embeddings.shape[-2:]
        masks = self.masks_from(src, tokens, (h, w), which, compute_dtype)
        return masks, self.iou_prediction_head(tokens[:, 0, :])[:, which]

    def attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        compute_dtype: torch.dtype | None = None,
        prepared: PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: output tokens (B, 1 + M + K, C) and image tokens (B or 1, h*w, C).

        Token 0 is the IoU token, tokens 1..M the mask tokens. ``compute_dtype``, ``prepared``:
        see :meth:`forward`.
        """
        check_compute_dtype(compute_dtype)
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(B, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        image = self._image_side(image_embeddings, dense_prompt_embeddings)
        return self.transformer(image, image_pe, tokens, compute_dtype, prepared)

    def prepare_image(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        compute_dtype: torch.dtype | None = None,
    ) -> PreparedImage:
        """What every prompt on one image shares, for :meth:`forward`'s ``prepared``.

        Args:
            image_embedding: (1, C, h, w).  image_pe: (1, C, h, w).
            dense_prompt_embeddings: the dense embedding shared by all prompts, (1, C, h, w) or
                an expansion of it (no mask input: the no-mask embedding).
            compute_dtype: as for :meth:`forward` (the prompts must be decoded with the same one).
        Returns:
            a :class:`~napari_sam.model.kernels.decoder_attention.PreparedImage`, valid for
            these inputs and the current weights only.
        """
        check_compute_dtype(compute_dtype)
        image = self._image_side(image_embedding, dense_prompt_embeddings[:1])
        return self.transformer.prepare_image(image, image_pe, compute_dtype)

    @staticmethod
    def _image_side(image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """``image_embeddings + dense_prompt_embeddings``, batch 1 where every prompt shares it.

        Broadcasting instead of repeating the (1, C, h, w) embedding and positional
        encoding B times. Without mask prompts the dense embedding is one vector
        expanded over the batch (stride 0), so the image side enters the
        transformer once, batch 1, and is shared inside its first layer.
        """
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]
        if dense.dtype != image_embeddings.dtype:  # a reduced-precision image side stays in its dtype
            if dense.stride(-1) == 0 and dense.stride(-2) == 0:
                dense = dense[..., :1, :1]  # one vector per prompt set: cast it, not its expansion
            dense = dense.to(image_embeddings.dtype)
        return image_embeddings + dense

    def decode_shared_image(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        select: Callable[[torch.Tensor], torch.Tensor],
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Multimask decoding of B prompts on one image, upscaling only the selected prompts' masks.

        Computes what :meth:`forward` computes (up to float rounding): the IoU head needs no
        upscaling, so the upscaled logits are made only for the prompts ``select`` picks (e.g.
        those with a mask whose predicted IoU passes a threshold). A decoder whose ``forward``
        or transformer was replaced on the instance runs its ``forward`` and selects after.

        Args:
            image_embedding: (1, C, h, w).  image_pe: (1, C, h, w).
            sparse: (B, K, C) prompt tokens.  dense: (1, C, h, w) or a (B, C, h, w) expansion of
                it: the dense embedding shared by all prompts (no mask inputs).
            select: maps the multimask IoU predictions (B, 3) to the indices (n,) of the
                prompts whose mask logits are wanted.
            compute_dtype: dtype of the image-side products (``None``: fp32); see :meth:`forward`.
        Returns:
            iou_predictions (B, 3), the selected prompt indices (n,), and their
            low-res mask logits (n, 3, 4h, 4w).
        """
        if "forward" in vars(self) or "forward" in vars(self.transformer):
            low, iou = self(image_embedding, image_pe, sparse, dense.expand(sparse.shape[0], -1, -1, -1),
                            multimask_output=True, **({} if compute_dtype is None else {"compute_dtype": compute_dtype}))
            idx = select(iou)
            return iou, idx, low[idx]
        _, _, h, w = image_embedding.shape
        tokens, keys = self.attend(image_embedding, image_pe, sparse, dense[:1], compute_dtype)
        iou = self.iou_prediction_head(tokens[:, 0, :])[:, 1:]
        idx = select(iou)
        if len(idx) == 0:
            return iou, idx, torch.zeros(0, 3, 4 * h, 4 * w, dtype=keys.dtype, device=keys.device)
        everything = len(idx) == sparse.shape[0] and bool((idx == torch.arange(len(idx), device=idx.device)).all())
        if keys.shape[0] > 1 and not everything:
            keys = keys[idx]
        masks = self.masks_from(keys, tokens if everything else tokens[idx], (h, w), slice(1, None), compute_dtype)
        return iou, idx, masks

    @fast_path(mask_head.masks_from)
    def masks_from(
        self,
        src: torch.Tensor,
        tokens: torch.Tensor,
        hw: tuple[int, int],
        which: slice = slice(None),
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Mask logits (n, M, 4h, 4w) from image tokens ``src`` (n or 1, h*w, C) and output ``tokens`` (n, ., C).

        ``which`` selects the mask tokens (default: all ``num_mask_tokens``).
        ``compute_dtype`` (``None``: ``src``'s dtype) is the dtype the upscaling runs in
        (the weights' dtype on the plain path); the logits are returned in the dtype of ``tokens``.
        """
        check_compute_dtype(compute_dtype)
        n = tokens.shape[0]
        hyper_in = mask_head.hypernetwork_weights(self, tokens, which)  # (n, M, C/8)
        h, w = hw
        src = src.to(hyper_in.dtype).expand(n, -1, -1)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(n, -1, h, w))  # (n, C/8, 4h, 4w)
        return (hyper_in @ upscaled.flatten(2)).view(n, -1, 4 * h, 4 * w)


@fast_path(
    mask_upscaling.upscale_masks,
    applies=lambda low_res, *args, separable=None, **kwargs: (
        separable if separable is not None else low_res.device.type == "cpu"
    ),
)
def upscale_masks(
    low_res: torch.Tensor,
    img_size: int,
    input_size: tuple[int, ...],
    original_size: tuple[int, ...],
    threshold: float | None = None,
    chunk_pixels: int = 1 << 24,
    separable: bool | None = None,
) -> torch.Tensor:
    """Upscale low-res logits to the original image, like the reference's ``postprocess_masks``.

    Resize bilinearly to the padded ``img_size`` square, crop to ``input_size``, resize to
    ``original_size``: the reference's two interpolations, bit-identical, a few masks at a
    time (``chunk_pixels``), upscaling only the low-res rows and columns the crop keeps.
    ``separable=True`` (the default on CPU) runs the sparse separable kernel instead
    (``kernels/mask_upscaling.py``: equal up to float rounding, 2-4x faster there).

    Args:
        low_res: (B, M, 4h, 4w) float logits.
        input_size: (h', w') of the resized image inside the padded input.
        original_size: (H, W) of the original image.
        threshold: if given, return ``logits > threshold`` (bool) instead of logits.
        chunk_pixels: about how many full-size pixels to process at once.
    Returns:
        (B, M, H, W) float logits, or bool masks with ``threshold``.
    """
    B, M, lh, lw = low_res.shape
    H, W = int(original_size[0]), int(original_size[1])
    out = torch.empty((B, M, H, W), dtype=torch.bool if threshold is not None else low_res.dtype, device=low_res.device)
    rows, cols = mask_upscaling.kept_low_res((lh, lw), img_size, input_size)
    up_h, up_w = rows * img_size // lh, cols * img_size // lw
    flat_in, flat_out = low_res.reshape(B * M, 1, lh, lw), out.view(B * M, 1, H, W)
    step = max(1, chunk_pixels // (up_h * up_w + H * W))
    for i in range(0, B * M, step):
        x = F.interpolate(flat_in[i : i + step, :, :rows, :cols], (up_h, up_w), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, (H, W), mode="bilinear", align_corners=False)
        if threshold is not None:
            torch.gt(x, threshold, out=flat_out[i : i + step])
        else:
            flat_out[i : i + step] = x
    return out
