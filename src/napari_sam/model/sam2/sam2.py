"""``SAM2Model``: SAM 2.1's modules and parameters, the image features and the SAM heads.

The module tree and parameter names equal Meta's ``SAM2Base`` (``sam2.1_hiera_*.pt``
``model`` entries load strictly). Per-frame tracking with the memory bank is in
:mod:`.tracking`; the predictors live in the engine.

Conventions: images are normalised (B, 3, S, S) float tensors, S = ``image_size``;
point coordinates are (x, y) pixels of that S x S input; masks are logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MLP
from .config import Sam2Config
from .decoder import Sam2MaskDecoder, Sam2PromptEncoder
from .hiera import ImageEncoder
from .memory import MemoryAttention, MemoryEncoder

#: Mask logit written where the object-score head says the object is absent.
NO_OBJ_SCORE = -1024.0


@dataclass
class ImageFeatures:
    """One frame's image features (batch B, usually 1).

    ``high_res``: [(B, C/8, S/4, S/4), (B, C/4, S/8, S/8)] projected skips of the decoder;
    ``embed``: (B, C, S/16, S/16) stride-16 features; ``pos``: (B, C, S/16, S/16) their encoding.
    """

    high_res: list[torch.Tensor]
    embed: torch.Tensor
    pos: torch.Tensor

    def expand(self, b: int) -> "ImageFeatures":
        return ImageFeatures([x.expand(b, -1, -1, -1) for x in self.high_res], self.embed.expand(b, -1, -1, -1),
                             self.pos.expand(b, -1, -1, -1))


@dataclass
class HeadOutput:
    """What the SAM heads return for B prompt sets.

    ``low_res_multimasks`` (B, M, S/4, S/4) and ``high_res_multimasks`` (B, M, S, S) logits,
    ``ious`` (B, M); the best of the M: ``low_res_masks`` (B, 1, S/4, S/4),
    ``high_res_masks`` (B, 1, S, S); ``obj_ptr`` (B, C); ``object_score_logits`` (B, 1).
    """

    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor


class SAM2Model(nn.Module):
    """SAM 2.1 (Ravi et al. 2024): Hiera image encoder, SAM heads, memory encoder and attention."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.cfg = cfg
        c, m = cfg.hidden_dim, cfg.mem_dim
        self.image_size = cfg.image_size
        self.hidden_dim, self.mem_dim, self.num_maskmem = c, m, cfg.num_maskmem
        self.image_encoder = ImageEncoder(cfg.trunk, c)
        self.memory_attention = MemoryAttention(c, m, cfg.memory_attention_layers, cfg.memory_attention_ffn_dim)
        self.memory_encoder = MemoryEncoder(c, m, cfg.fuser_layers)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr, self.no_obj_embed_spatial):
            nn.init.trunc_normal_(p, std=0.02)
        grid = cfg.embedding_size
        self.sam_prompt_encoder = Sam2PromptEncoder(c, (grid, grid), (cfg.image_size, cfg.image_size), mask_in_chans=16)
        self.sam_mask_decoder = Sam2MaskDecoder(
            c,
            dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
            stability_delta=cfg.dynamic_multimask_stability_delta,
            stability_thresh=cfg.dynamic_multimask_stability_thresh,
        )
        self.obj_ptr_proj = MLP(c, c, c, 3)
        self.obj_ptr_tpos_proj = nn.Linear(c, m)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    def forward(self, *args, **kwargs):
        raise NotImplementedError("Use SAM2ImagePredictor or SAM2VideoPredictor (napari_sam) to run SAM 2.")

    # -- image features -------------------------------------------------------------------------
    def forward_image(self, image: torch.Tensor) -> ImageFeatures:
        """Normalised (B, 3, S, S) images -> their :class:`ImageFeatures`."""
        fpn, pos = self.image_encoder(image)
        dec = self.sam_mask_decoder
        return ImageFeatures([dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])], fpn[2], pos[2])

    def pixel_normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB in [0, 1] -> normalised by ImageNet mean and std."""
        mean = torch.tensor(self.cfg.pixel_mean, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.pixel_std, device=image.device).view(1, 3, 1, 1)
        return (image - mean) / std

    # -- SAM heads --------------------------------------------------------------------------------
    def forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> HeadOutput:
        """Decode a mask per batch element of (B, C, h, w) ``backbone_features``.

        ``point_inputs``: {"point_coords": (B, P, 2) float, "point_labels": (B, P) int};
        ``mask_inputs``: (B, 1, H, W) logits or a binary mask (resized to 4h x 4w).
        """
        b = backbone_features.shape[0]
        device = backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        mask_prompt = None
        if mask_inputs is not None:
            size = self.sam_prompt_encoder.mask_input_size
            mask_prompt = mask_inputs
            if tuple(mask_inputs.shape[-2:]) != tuple(size):
                mask_prompt = F.interpolate(mask_inputs.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        low_multi, ious, tokens, obj_scores = self.sam_mask_decoder(
            backbone_features, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, multimask_output, high_res_features
        )
        appearing = obj_scores > 0
        low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE).float()
        high_multi = F.interpolate(low_multi, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        token = tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=device)
            low, high = low_multi[rows, best].unsqueeze(1), high_multi[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            low, high = low_multi, high_multi
        present = appearing.float()
        obj_ptr = present * self.obj_ptr_proj(token) + (1 - present) * self.no_obj_ptr
        return HeadOutput(low_multi, high_multi, ious, low, high, obj_ptr, obj_scores)

    def use_mask_as_output(
        self, backbone_features: torch.Tensor, high_res_features: list[torch.Tensor], mask_inputs: torch.Tensor
    ) -> HeadOutput:
        """A given (B, 1, S, S) binary mask becomes the output (logits +-10); only the pointer uses the heads."""
        mask = mask_inputs.float()
        high = mask * 20.0 - 10.0
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        ious = mask.new_ones(mask.shape[0], 1)
        heads = self.forward_sam_heads(backbone_features, mask_inputs=self.mask_downsample(mask),
                                       high_res_features=high_res_features)
        present = torch.any(mask.flatten(1) > 0.0, dim=1)[..., None].float()
        obj_scores = 20.0 * present - 10.0
        obj_ptr = present * heads.obj_ptr + (1 - present) * self.no_obj_ptr
        return HeadOutput(low, high, ious, low, high, obj_ptr, obj_scores)

    # -- memory -------------------------------------------------------------------------------------
    def encode_new_memory(
        self, pix_feat: torch.Tensor, high_res_masks: torch.Tensor, object_score_logits: torch.Tensor, is_mask_from_pts: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features (B, C, h, w) + its (B, 1, S, S) mask logits -> memory (B, mem_dim, h, w) and encoding."""
        if self.cfg.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
            mask = (high_res_masks > 0).float()
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * self.cfg.sigmoid_scale_for_mem_enc + self.cfg.sigmoid_bias_for_mem_enc
        feats, pos = self.memory_encoder(pix_feat, mask)
        absent = 1 - (object_score_logits > 0).float()
        feats = feats + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return feats, pos
