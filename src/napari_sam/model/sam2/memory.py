"""SAM 2's memory: the encoder that turns a frame and its mask into a memory, and the
attention that conditions a new frame on the memory bank.

Parameter names follow Meta's ``memory_encoder`` and ``memory_attention``. Token
layouts are batch-first: (B, N, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from .position import PositionEmbeddingSine, apply_rope, axial_rope_frequencies


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convs (LayerNorm2d + GELU after each), then a 1x1 conv to ``embed_dim``."""

    def __init__(self, embed_dim: int = 256, total_stride: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        c_in = 1
        for _ in range(int(math.log2(total_stride))):
            c_out = c_in * 4
            self.encoder.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(c_out))
            self.encoder.append(nn.GELU())
            c_in = c_out
        self.encoder.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """(B, C, h, w) frame features + (B, 1, S, S) mask scores -> (B, mem_dim, h, w) memory and its encoding."""

    def __init__(self, in_dim: int = 256, out_dim: int = 64, fuser_layers: int = 2) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, fuser_layers)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.position_encoding = PositionEmbeddingSine(out_dim)

    def forward(self, pix_feat: torch.Tensor, mask_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask_scores`` are already squashed (sigmoid, scaled and shifted) by the caller."""
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask_scores)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)


class RoPEAttention(nn.Module):
    """Single-projection multi-head attention with axial rotary encoding of queries and keys.

    Keys may hold ``repeat`` frames of the query grid (cross-attention to memories)
    followed by ``num_k_exclude_rope`` tokens left unrotated (object pointers).
    """

    def __init__(self, embedding_dim: int, num_heads: int, kv_in_dim: int | None = None, theta: float = 10000.0) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim or embedding_dim
        self.num_heads = num_heads
        self.internal_dim = embedding_dim
        self.theta = theta
        self.q_proj = nn.Linear(embedding_dim, embedding_dim)
        self.k_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.v_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.out_proj = nn.Linear(embedding_dim, embedding_dim)
        self._freqs: dict[tuple, torch.Tensor] = {}

    def _frequencies(self, n: int, device) -> torch.Tensor:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"RoPE attention needs a square token grid, got {n} tokens")
        key = (n, str(device))
        if key not in self._freqs:
            self._freqs[key] = axial_rope_frequencies(self.internal_dim // self.num_heads, side, side, self.theta).to(device)
        return self._freqs[key]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        nq = q.shape[-2]
        freqs = self._frequencies(nq, q.device)
        q = apply_rope(q, freqs)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            if n_rope % nq:
                raise ValueError(f"{n_rope} memory tokens are not a whole number of {nq}-token frames")
            k = torch.cat([apply_rope(k[:, :, :n_rope], freqs, n_rope // nq), k[:, :, n_rope:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MemoryAttentionLayer(nn.Module):
    """Self-attention (RoPE), cross-attention to the memory (RoPE on spatial memories), ReLU FFN; pre-norm."""

    def __init__(self, d_model: int, mem_dim: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, 1)
        self.cross_attn_image = RoPEAttention(d_model, 1, kv_in_dim=mem_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, memory_pos, num_k_exclude_rope: int) -> torch.Tensor:
        t = self.norm1(tgt)
        tgt = tgt + self.self_attn(t, t, t)
        t = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(t, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope)
        t = self.norm3(tgt)
        return tgt + self.linear2(F.relu(self.linear1(t)))


class MemoryAttention(nn.Module):
    """Conditions the current frame's tokens on the memory bank.

    Args of forward: ``curr`` (B, HW, C) frame tokens and ``curr_pos`` their encoding;
    ``memory`` (B, M, mem_dim) and ``memory_pos``; the last ``num_obj_ptr_tokens`` memory
    tokens are object pointers (no rotary encoding). Returns (B, HW, C).
    """

    def __init__(self, d_model: int = 256, mem_dim: int = 64, num_layers: int = 4, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, mem_dim, dim_feedforward) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        out = curr + 0.1 * curr_pos
        for layer in self.layers:
            out = layer(out, memory, memory_pos, num_obj_ptr_tokens)
        return self.norm(out)
