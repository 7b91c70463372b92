"""Mask decoding of many single-image prompts at once, upscaling only the masks that are wanted.

Computes exactly what ``model.mask_decoder`` computes (up to float rounding) for
B prompts on one image embedding. The model's own attention already shares the
image side across prompts and folds projections onto the prompt tokens (see
:class:`napari_sam.model.transformer.Attention`); on top of that, the IoU head
needs no upscaling, so the upscaled mask logits are computed only for the
prompts the caller asks for (e.g. those with a mask whose predicted IoU passes
a threshold).

Used by automatic mask generation; works on the model's own modules and
weights (``napari_sam.model.mask_decoder.MaskDecoder`` with a
``TwoWayTransformer``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...model.mask_decoder import MaskDecoder
from ...model.transformer import TwoWayTransformer


def supports_fast_decoding(decoder: torch.nn.Module) -> bool:
    """True for an unmodified :class:`MaskDecoder` whose transformer is a :class:`TwoWayTransformer`."""
    return (
        type(decoder) is MaskDecoder
        and "forward" not in vars(decoder)
        and type(decoder.transformer) is TwoWayTransformer
        and "forward" not in vars(decoder.transformer)
    )


def decode_shared_image(
    decoder: MaskDecoder,
    image_embedding: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    select: Callable[[torch.Tensor], torch.Tensor],
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multimask decoding of B prompts on one image.

    Args:
        decoder: the model's mask decoder.
        image_embedding: (1, C, h, w).  image_pe: (1, C, h, w).
        sparse: (B, K, C) prompt tokens.  dense: (1, C, h, w), the dense embedding
            shared by all prompts (no mask inputs).
        select: maps the multimask IoU predictions (B, 3) to the indices (n,) of
            the prompts whose mask logits are wanted.
        compute_dtype: dtype of the image-side products (``None``: fp32); see
            :meth:`napari_sam.model.mask_decoder.MaskDecoder.forward`.
    Returns:
        iou_predictions (B, 3), the selected prompt indices (n,), and their
        low-res mask logits (n, 3, 4h, 4w).
    """
    _, _, h, w = image_embedding.shape
    tokens, keys = decoder.attend(image_embedding, image_pe, sparse, dense, compute_dtype)
    iou = decoder.iou_prediction_head(tokens[:, 0, :])[:, 1:]
    idx = select(iou)
    if len(idx) == 0:
        return iou, idx, torch.zeros(0, 3, 4 * h, 4 * w, dtype=keys.dtype, device=keys.device)
    everything = len(idx) == sparse.shape[0] and bool((idx == torch.arange(len(idx), device=idx.device)).all())
    if keys.shape[0] > 1 and not everything:
        keys = keys[idx]
    masks = decoder.masks_from(keys, tokens if everything else tokens[idx], (h, w), slice(1, None), compute_dtype)
    return iou, idx, masks
