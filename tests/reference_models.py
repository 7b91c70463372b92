"""Meta's reference SAM built from a napari-sam configuration (for parity tests).

Only for tests: imports ``segment_anything``.
"""

from __future__ import annotations

from functools import partial

import torch

from napari_sam.model.config import SamConfig


def reference_sam(cfg: SamConfig):
    """Meta's ``Sam`` with the architecture of ``cfg`` (a ViT configuration), random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    e, d = cfg.encoder, cfg.decoder
    grid = e.img_size // e.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=e.img_size, patch_size=e.patch_size, embed_dim=e.embed_dim, depth=e.depth,
            num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, out_chans=e.out_chans, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, rel_pos_zero_init=True,
            window_size=e.window_size, global_attn_indexes=e.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=e.out_chans, image_embedding_size=(grid, grid),
            input_image_size=(e.img_size, e.img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=d.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=d.transformer_depth, embedding_dim=e.out_chans,
                                          mlp_dim=d.transformer_mlp_dim, num_heads=d.transformer_num_heads),
            transformer_dim=e.out_chans, iou_head_depth=d.iou_head_depth, iou_head_hidden_dim=d.iou_head_hidden_dim,
        ),
    )


def two_disc_stack(n_z: int = 4, shape: tuple[int, int] = (40, 48)):
    """A (Z, H, W) uint16 stack of two drifting discs with noise, and its (Z, H, W) int32 truth."""
    import numpy as np
    from skimage.draw import disk

    truth = np.zeros((n_z, *shape), np.int32)
    for z in range(n_z):
        truth[z][disk((12 + z, 12), 7, shape=shape)] = 1
        truth[z][disk((26, 34 - z), 8, shape=shape)] = 2
    img = (truth > 0) * 1500 + 200 + np.random.default_rng(0).normal(0, 10, truth.shape)
    return img.astype(np.uint16), truth
