"""MobileSAM's TinyViT image encoder (``vit_t``).

Layout (for the default 1024 px input, widths ``(64, 128, 160, 320)``)::

    patch_embed   two stride-2 3x3 conv+BN, GELU between   (B, 3, 1024, 1024) -> (B, 64, 256, 256)
    layers.0      MBConv blocks, then patch merging        -> (B, 128, 128, 128)
    layers.1      windowed-attention blocks, merging       -> (B, 160, 64, 64)
    layers.2      windowed-attention blocks, merging       -> (B, 320, 64, 64)  (last merge keeps size)
    layers.3      windowed-attention blocks                -> (B, 320, 64, 64)
    neck          1x1 conv, LayerNorm2d, 3x3 conv, LN2d    -> (B, 256, 64, 64)

``norm_head`` and ``head`` (TinyViT's classifier) are never run, but they are
part of the published checkpoint, so they exist here for strict loading.

Attention blocks use a learned bias per head and per relative offset
``(|dy|, |dx|)`` inside a window (LeViT style). The bias table is gathered to
a (heads, N, N) matrix and passed as the float mask of
``scaled_dot_product_attention``; the index matrix is a non-persistent buffer,
as in the reference, so it is not part of the state dict.

Convolutions are followed by BatchNorm (``Conv2dBN``: keys ``c`` and ``bn``);
the encoder is meant to run in eval mode, where BN uses its running stats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, window_partition, window_unpartition
from .config import TinyViTConfig


class Conv2dBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (keys ``c.*``, ``bn.*``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    """(B, in_chans, H, W) -> (B, embed_dim, H/4, W/4) through two stride-2 convolutions."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        half = embed_dim // 2
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, half, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(half, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. (B, C, H, W) -> same."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        # Zero-initialised BN scale: a fresh block starts as (GELU of) the identity.
        self.conv3 = Conv2dBN(hidden, dim, 1, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        y = self.conv3(y)
        return F.gelu(x + y)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv (stride 2, or 1), 1x1 conv. (B, C, H, W) -> (B, C', H/s, W/s)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


def relative_offset_index(window: int) -> torch.Tensor:
    """Index of the offset ``(|dy|, |dx|)`` between every pair of positions in a square window.

    Offsets are numbered ``|dy| * window + |dx|``: the order in which they first
    appear scanning (query, key) pairs row-major, which is the column order of
    the published ``attention_biases`` tables.

    Returns:
        (window**2, window**2) long tensor with values in [0, window**2).
    """
    pos = torch.arange(window)
    ys = pos.repeat_interleave(window)  # (N,) row of each position
    xs = pos.repeat(window)  # (N,) column of each position
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with a learned relative-offset bias, over (B, N, C) windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        # Output features are laid out per head as [q_h | k_h | v_h].
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", relative_offset_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, C), N = window_size**2
        B, N, C = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each (B, heads, N, head_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear (keys ``norm``, ``fc1``, ``fc2``). (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (+ residual), depthwise local conv, MLP (+ residual). (B, H, W, C) -> same."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        # Zero padding happens before the attention's LayerNorm, so padded
        # positions take part as keys, exactly as in the reference.
        windows, pad_hw = window_partition(x, ws)  # (B * nW, ws, ws, C)
        windows = self.attn(windows.reshape(-1, ws * ws, C)).view(-1, ws, ws, C)
        x = x + window_unpartition(windows, ws, pad_hw, (H, W))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """MBConv blocks then an optional patch merging. (B, C, H, W) -> (B, C', H', W')."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks then an optional patch merging. (B, C, H, W) -> (B, C', H', W')."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # channels last for the blocks
        for blk in self.blocks:
            x = blk(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT encoder: (B, in_chans, img_size, img_size) -> (B, out_chans, img_size/16, img_size/16).

    The first stage is convolutional; the others use windowed attention. Each
    stage but the last ends in a patch merging that widens to the next stage's
    width; all merges halve the resolution except the one into the last stage,
    so the total stride is 4 * 2 * 2 = 16.
    """

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        n = len(cfg.embed_dims)
        assert len(cfg.depths) == len(cfg.num_heads) == len(cfg.window_sizes) == n >= 2
        self.img_size = cfg.img_size
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0])

        def merge(i: int) -> PatchMerging | None:
            if i == n - 1:
                return None
            return PatchMerging(dims[i], dims[i + 1], stride=1 if i == n - 2 else 2)

        self.layers = nn.ModuleList()
        self.layers.append(ConvStage(dims[0], cfg.depths[0], cfg.mbconv_expand_ratio, merge(0)))
        for i in range(1, n):
            self.layers.append(
                AttentionStage(
                    dims[i],
                    cfg.depths[i],
                    cfg.num_heads[i],
                    cfg.window_sizes[i],
                    cfg.mlp_ratio,
                    cfg.local_conv_size,
                    merge(i),
                )
            )
        # Unused classifier of the ImageNet-pretrained TinyViT, kept for the checkpoint keys.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in_chans, img_size, img_size)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)  # (B, out_chans, img_size / 16, img_size / 16)
