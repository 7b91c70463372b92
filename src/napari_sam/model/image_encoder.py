"""SAM's ViT image encoder.

Patch embedding, absolute position embedding, transformer blocks with windowed
attention (and a few global-attention blocks), each with a decomposed relative
position bias, followed by a convolutional neck down to ``out_chans`` channels.

The attention is written here as the plain formulation (Meta's); its fast kernel
(bias built in blocks of query rows, fused or explicit matmuls, windows projected
before partitioning) is in ``kernels/encoder_attention.py`` and runs unless
:func:`~napari_sam.model.kernels.use_reference_paths` is active.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, get_rel_pos, window_partition, window_unpartition
from .config import ViTConfig
from .kernels import encoder_attention, fast_path


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H', W', embed_dim), made contiguous once here so the
        # residual stream (and every LayerNorm on it) stays in channels-last memory.
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention with a decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            assert input_size is not None, "relative position bias needs the input size"
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    @fast_path(encoder_attention.attention)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale + relative position bias) v over the tokens of x (B, H, W, dim)."""
        B, H, W, _ = x.shape
        # qkv with shape (3, B * nHead, H * W, C)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (H, W))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def add_decomposed_rel_pos(
    attn: torch.Tensor, q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Scores (B*heads, H*W, H*W) plus the decomposed relative position bias of queries q (B*heads, H*W, C)."""
    h, w = size
    Rh, Rw = get_rel_pos(h, h, rel_pos_h), get_rel_pos(w, w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = attn.view(B, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(B, h * w, h * w)


class Block(nn.Module):
    """Transformer block: windowed (or global) attention then an MLP, pre-norm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    @fast_path(encoder_attention.block_attention)
    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The block's attention of normalised tokens x (B, H, W, dim): within windows, or global."""
        if self.window_size == 0:
            return self.attn(x)
        H, W = x.shape[1], x.shape[2]
        windows, pad_hw = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, pad_hw, (H, W))


class ImageEncoderViT(nn.Module):
    """ViT image encoder: (B, 3, img_size, img_size) -> (B, out_chans, S, S), S = img_size / patch."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        grid = cfg.img_size // cfg.patch_size
        self.pos_embed: nn.Parameter | None = None
        if cfg.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=cfg.embed_dim,
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                use_rel_pos=cfg.use_rel_pos,
                window_size=cfg.window_size if i not in cfg.global_attn_indexes else 0,
                input_size=(grid, grid),
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
