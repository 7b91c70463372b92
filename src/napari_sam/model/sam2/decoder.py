"""SAM 2's prompt encoder and mask decoder.

The prompt encoder is SAM's, with box corners also accepted as points (labels 2
and 3, as SAM 2 concatenates boxes to the clicks). The mask decoder is SAM's
two-way transformer decoder plus what SAM 2 adds: stride-4 and stride-8 image
features in the upscaling path, an object-score token whose head says whether the
object is present (occlusion), and the mask tokens handed out as object pointers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common import MLP, LayerNorm2d
from ..prompt_encoder import PromptEncoder
from ..transformer import TwoWayTransformer


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder; points may carry labels -1 (padding), 0, 1, 2 and 3 (box corners)."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        emb = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        labels = labels[..., None]
        emb = emb + (labels == 2) * self.point_embeddings[2].weight
        return emb + (labels == 3) * self.point_embeddings[3].weight


class Sam2MaskDecoder(nn.Module):
    """Two-way transformer decoder with high-resolution skips and an object-score head.

    Parameter names follow Meta's ``sam_mask_decoder``.
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=c, num_heads=8, mlp_dim=2048)
        for layer in self.transformer.layers:  # SAM 2 names the two MLP layers layers.0 / layers.1
            layer.mlp = MLP(c, 2048, c, 2)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.obj_score_token = nn.Embedding(1, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True)
        self.pred_obj_score_head = MLP(c, c, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks for B prompt sets.

        Args:
            image_embeddings: (1 or B, C, h, w) stride-16 features; a batch of 1 is shared.
            image_pe: (1, C, h, w) dense position encoding.
            sparse_prompt_embeddings: (B, N, C); dense_prompt_embeddings: (B, C, h, w).
            multimask_output: three masks (tokens 1-3) instead of one (token 0).
            high_res_features: [(1 or B, C/8, 4h, 4w), (1 or B, C/4, 2h, 2w)], already
                projected by ``conv_s0`` / ``conv_s1``.
        Returns:
            masks (B, M, 4h, 4w) logits, iou (B, M), mask tokens for object pointers
            (B, M, C) (token 0 alone when single-mask), object-score logits (B, 1).
        """
        masks, iou, mask_tokens, obj_scores = self._predict(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], mask_tokens[:, 1:], obj_scores
        if self.dynamic_multimask_via_stability and not self.training:
            masks, iou = self._stable_single_mask(masks, iou)
        else:
            masks, iou = masks[:, 0:1], iou[:, 0:1]
        return masks, iou, mask_tokens[:, 0:1], obj_scores

    def _predict(self, image, image_pe, sparse, dense, high_res):
        b = sparse.shape[0]
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
        src = image + dense
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token = hs[:, 1, :]
        mask_tokens = hs[:, 2 : 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(src.shape[0], c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)
        hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        bu, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(bu, cu, hu * wu)).reshape(b, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_token), mask_tokens, self.pred_obj_score_head(hs[:, 0, :])

    def _stable_single_mask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask where it is stable, else the multimask output with the best predicted IoU."""
        multi, multi_iou = masks[:, 1:], iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi.shape[0], device=masks.device)
        best_masks, best_iou = multi[rows, best].unsqueeze(1), multi_iou[rows, best].unsqueeze(1)
        single, single_iou = masks[:, 0:1], iou[:, 0:1]
        flat = single.flatten(-2)
        inter = torch.sum(flat > self.stability_delta, dim=-1).float()
        union = torch.sum(flat > -self.stability_delta, dim=-1).float()
        stable = torch.where(union > 0, inter / union, 1.0) >= self.stability_thresh
        return (
            torch.where(stable[..., None, None].expand_as(single), single, best_masks),
            torch.where(stable.expand_as(single_iou), single_iou, best_iou),
        )
