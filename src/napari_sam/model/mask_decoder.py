"""SAM's mask decoder: two-way transformer, upscaling and hypernetwork heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, K, C).
            dense_prompt_embeddings: (B, C, h, w).
        Returns:
            low-res mask logits (B, M, 4h, 4w) and IoU predictions (B, M),
            M = 3 with ``multimask_output`` else 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(B, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        # Broadcasting instead of repeating the (1, C, h, w) embedding and positional
        # encoding B times. Without mask prompts the dense embedding is one vector
        # expanded over the batch (stride 0), so the image side enters the
        # transformer once, batch 1, and is broadcast inside its first layer.
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]
        src = image_embeddings + dense
        pos_src = image_pe
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        if src.shape[0] != B:
            src = src.expand(B, -1, -1)
        b = B
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        # (B, h*w, C) is already the channels-last layout of (B, C, h, w): view it as
        # such (no copy); the transposed convolutions keep channels-last.
        src = src.reshape(b, h, w, c).permute(0, 3, 1, 2)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        if upscaled.is_contiguous():
            masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        else:  # channels-last: (B, h*w, c) @ (B, c, M), no copy of the upscaled features
            pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)
            masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred


def upscale_masks(
    low_res: torch.Tensor,
    img_size: int,
    input_size: tuple[int, ...],
    original_size: tuple[int, ...],
    threshold: float | None = None,
    chunk_pixels: int = 1 << 24,
) -> torch.Tensor:
    """Upscale low-res logits to the original image, like the reference's ``postprocess_masks``.

    Same two bilinear steps (to the padded ``img_size`` square, crop to
    ``input_size``, resize to ``original_size``), so the values are identical;
    but done a few masks at a time, so the (B, M, img_size, img_size)
    intermediate never exists in full, and thresholded per chunk when
    ``threshold`` is given (bool output: a quarter of the memory of float logits).

    Args:
        low_res: (B, M, 4h, 4w) float logits.
        input_size: (h', w') of the resized image inside the padded input.
        original_size: (H, W) of the original image.
        threshold: if given, return ``logits > threshold`` (bool) instead of logits.
        chunk_pixels: about how many full-size pixels to process at once.
    Returns:
        (B, M, H, W) float logits, or bool masks with ``threshold``.
    """
    B, M = low_res.shape[:2]
    H, W = int(original_size[0]), int(original_size[1])
    out = torch.empty((B, M, H, W), dtype=torch.bool if threshold is not None else low_res.dtype, device=low_res.device)
    flat_in = low_res.reshape(B * M, 1, *low_res.shape[2:])
    flat_out = out.view(B * M, 1, H, W)
    step = max(1, chunk_pixels // (img_size * img_size + H * W))
    for i in range(0, B * M, step):
        x = F.interpolate(flat_in[i : i + step], (img_size, img_size), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, (H, W), mode="bilinear", align_corners=False)
        if threshold is not None:
            torch.gt(x, threshold, out=flat_out[i : i + step])
        else:
            flat_out[i : i + step] = x
    return out
