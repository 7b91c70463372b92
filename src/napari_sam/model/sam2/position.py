"""Position encodings of SAM 2: 2-D sine (feature maps), 1-D sine (time) and axial rotary (RoPE).

None of them has parameters. Shapes are given per function; all work in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _inverse_frequencies(n: int, temperature: float, device) -> torch.Tensor:
    """(n,) divisors ``temperature ** (2 * (i // 2) / n)`` of the sine/cosine pairs."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / n)


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2-D sine encoding of a (B, C, H, W) map -> (B, num_pos_feats, H, W).

    The first half of the channels encodes the row, the second the column; rows and
    columns are normalised to (0, 2*pi]. Results are cached per (H, W, device).
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def encoding(self, h: int, w: int, device) -> torch.Tensor:
        """(num_pos_feats, h, w) encoding of an h x w grid."""
        key = (h, w, str(device))
        if key not in self._cache:
            eps = 1e-6
            y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
            x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
            y = y / (y[-1:] + eps) * self.scale
            x = x / (x[-1:] + eps) * self.scale
            dim_t = _inverse_frequencies(self.num_pos_feats, self.temperature, device)
            px = x[:, None] / dim_t  # (w, F)
            py = y[:, None] / dim_t  # (h, F)
            px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
            py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
            pos = torch.cat(
                (py[:, None, :].expand(h, w, -1), px[None, :, :].expand(h, w, -1)), dim=2
            ).permute(2, 0, 1)
            self._cache[key] = pos.contiguous()
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe = self.encoding(x.shape[-2], x.shape[-1], x.device)
        return pe[None].expand(x.shape[0], -1, -1, -1)


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine encoding: positions (N,) float -> (N, dim) as [sin..., cos...]."""
    dim_t = _inverse_frequencies(dim // 2, temperature, positions.device)
    pe = positions.unsqueeze(-1) / dim_t
    return torch.cat([pe.sin(), pe.cos()], dim=-1)


def axial_rope_frequencies(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex (end_x * end_y, dim // 2) rotations of an axial 2-D RoPE over a row-major grid.

    The first dim // 4 frequencies rotate with the column index, the rest with the row.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    ang_x = torch.outer(t_x, freqs)
    ang_y = torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(ang_x), ang_x), torch.polar(torch.ones_like(ang_y), ang_y)], -1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Rotate x (B, heads, N, d) by ``freqs`` (N / repeat, d / 2), repeated ``repeat`` times along N."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    if repeat > 1:
        freqs = freqs.repeat(repeat, 1)
    out = torch.view_as_real(xc * freqs).flatten(-2)
    return out.type_as(x)
