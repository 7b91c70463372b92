"""SAM's prompt encoder: points, boxes and masks to sparse and dense embeddings."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Fourier features)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        # coords in [0, 1], shape (..., 2) in (x, y) order
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (h, w) grid -> (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode (B, N, 2) pixel coordinates (x, y) in an image of size (h, w)."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding width (256 for the published models).
        image_embedding_size: (h, w) of the image embedding grid.
        input_image_size: (H, W) of the padded encoder input.
        mask_in_chans: hidden channels of the mask downscaling convs.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # positive point, negative point, box top-left, box bottom-right
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: tuple[tuple, dict] | None = None  # (buffer key, {dtype: pe}): see get_dense_pe

    def get_dense_pe(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Positional encoding of the image embedding grid, (1, C, h, w), in ``dtype`` (default fp32).

        It depends only on the (untrained) frequency buffer, so it is computed once
        (and cast once per dtype) and reused until that buffer changes (a new state
        dict, a move to another device); sin/cos over the whole grid is otherwise a few
        ms of every click. The tensor is a channels-last view ((h, w, C) storage), so the
        decoder's (1, h*w, C) token layout of it needs no copy. Inference-mode tensors
        are kept apart from normal ones (autograd cannot save the former).
        """
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (g.device, g.data_ptr(), g._version, torch.is_inference_mode_enabled())
        if self._dense_pe is None or self._dense_pe[0] != key:
            with torch.no_grad():
                pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            self._dense_pe = (key, {pe.dtype: pe})
        by_dtype = self._dense_pe[1]
        dtype = dtype or next(iter(by_dtype))
        if dtype not in by_dtype:
            with torch.no_grad():
                by_dtype[dtype] = next(iter(by_dtype.values())).to(dtype)
        return by_dtype[dtype]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # to pixel centres
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = emb + (labels == 0) * self.point_embeddings[0].weight
        emb = emb + (labels == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes + 0.5
        corners = boxes.reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[2].weight[0]
        emb[:, 1, :] += self.point_embeddings[3].weight[0]
        return emb

    def _get_batch_size(self, points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: coords (B, N, 2) in input-frame (x, y) pixels and labels (B, N).
            boxes: (B, 4) as x0, y0, x1, y1 in input-frame pixels.
            masks: (B, 1, 4h, 4w) low-resolution mask logits.
        Returns:
            sparse (B, K, C) and dense (B, C, h, w) embeddings.
        """
        bs = self._get_batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                bs, -1, self.image_embedding_size[0], self.image_embedding_size[1]
            )
        return sparse, dense
