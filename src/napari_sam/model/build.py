"""Builders: a model type name (or configuration) to a ``Sam`` in eval mode."""

from __future__ import annotations

import os

import torch

from .checkpoint import load_into, read_state_dict
from .config import SamConfig, TinyViTConfig, get_config
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer


def _build_encoder(cfg: SamConfig) -> torch.nn.Module:
    if isinstance(cfg.encoder, TinyViTConfig):
        from .tiny_vit import TinyViT

        return TinyViT(cfg.encoder)
    return ImageEncoderViT(cfg.encoder)


def build_from_config(cfg: SamConfig) -> Sam:
    """Assemble an untrained ``Sam`` (random weights) for ``cfg``."""
    dim = cfg.prompt_embed_dim
    grid = cfg.embedding_size
    dec = cfg.decoder
    return Sam(
        image_encoder=_build_encoder(cfg),
        prompt_encoder=PromptEncoder(dim, (grid, grid), (cfg.img_size, cfg.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dim,
                num_heads=dec.transformer_num_heads,
                mlp_dim=dec.transformer_mlp_dim,
                attention_downsample_rate=dec.attention_downsample_rate,
            ),
            num_multimask_outputs=dec.num_multimask_outputs,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        name=cfg.name,
    )


def build_sam(
    model_type: str | SamConfig = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Sam:
    """Build a SAM of ``model_type`` (``vit_b``, ``vit_l``, ``vit_h``, ``vit_t``, ``tiny``).

    ``checkpoint`` is loaded safely (weights only, strict keys). ``device``
    defaults to CPU here; the engine's ``load_model`` picks CUDA/MPS/CPU.
    The model is returned in eval mode with fp32 weights. How it runs (precision,
    ``torch.compile``) is not the model's business: give it to the engine's predictor
    (``SamPredictor(model, precision="bf16")``, see ``engine/models/device.py``).
    """
    cfg = model_type if isinstance(model_type, SamConfig) else get_config(model_type)
    model = build_from_config(cfg)
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), cfg.name)
    model.eval()
    if device is not None:
        model.to(device)
    return model


sam_model_registry = {
    name: (lambda checkpoint=None, _n=name: build_sam(_n, checkpoint)) for name in ("vit_b", "vit_l", "vit_h", "vit_t", "tiny")
}
sam_model_registry["default"] = sam_model_registry["vit_h"]
