"""SAM's ViT image encoder.

Patch embedding, absolute position embedding, transformer blocks with windowed
attention (and a few global-attention blocks), each with a decomposed relative
position bias, followed by a convolutional neck down to ``out_chans`` channels.

The relative position bias enters attention as an additive mask. In fp32 the
fused ``scaled_dot_product_attention`` kernel runs it; in bf16/fp16 explicit
batched matmuls do (faster on CPU). Global blocks build the bias for a block of
query rows at a time (``_BIAS_CHUNK_ELEMS``), so no (heads, tokens, tokens)
matrix is ever held in full: peak memory stays a few hundred MB for vit_b at
1024 px instead of several GB. Numerically this matches Meta's formulation
(tests/test_parity_reference.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .config import ViTConfig


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H', W', embed_dim), made contiguous once here so the
        # residual stream (and every LayerNorm on it) stays in channels-last memory.
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        rel_pos: (L, C) table of embeddings for relative offsets.
    Returns:
        (q_size, k_size, C) tensor.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, W, dim)
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from the projected (B, H, W, 3 * dim) queries, keys and values; (B, H, W, dim) before ``proj``."""
        B, H, W, _ = qkv.shape
        N = H * W
        qkv = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        else:
            out = self._attend_with_rel_pos(q, k, v, H, W)
        return out.reshape(B, H, W, -1)

    def _rel_terms(self, q: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decomposed bias terms: (B, heads, H, W, H) over key rows and (B, heads, H, W, W) over key columns."""
        B, nh, N, C = q.shape
        Rh = get_rel_pos(H, H, self.rel_pos_h).to(q.dtype)  # (H, H, C)
        Rw = get_rel_pos(W, W, self.rel_pos_w).to(q.dtype)  # (W, W, C)
        r_q = q.reshape(B, nh, H, W, C)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).contiguous()
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).contiguous()
        return rel_h, rel_w

    def _attend_with_rel_pos(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int
    ) -> torch.Tensor:
        """Attention with the additive decomposed bias; returns (B, N, heads, head_dim).

        The bias for a block of query rows is materialised only for that block
        (at most ``_BIAS_CHUNK_ELEMS`` elements), so global attention over
        64 x 64 tokens never holds a full (heads, N, N) matrix.
        """
        B, nh, N, C = q.shape
        rel_h, rel_w = self._rel_terms(q, H, W)
        # Training (autograd): no out= buffers, chunks concatenated instead of written in place.
        grad = torch.is_grad_enabled() and (q.requires_grad or rel_h.requires_grad)
        explicit = q.dtype in (torch.bfloat16, torch.float16)
        # Blocks of (heads, query rows) of at most `budget` score elements. In reduced precision
        # small blocks whose scores stay in cache through bias add, softmax and the second
        # matmul are about 30 % faster than large ones for global attention at 64 x 64 tokens;
        # windows (small grids) attend in one block in any precision.
        budget = _EXPLICIT_CHUNK_ELEMS if explicit and H * W > _SMALL_GRID else _BIAS_CHUNK_ELEMS
        heads = max(1, min(nh, budget // max(1, B * W * N)))
        if explicit:
            k = k.transpose(2, 3).contiguous()  # (B, heads, C, N): the matmul operands prepared once
            v = v.contiguous()
        rows_per_chunk = max(1, min(H, budget // max(1, B * heads * W * N)))
        buf = None if grad else q.new_empty(B * heads * rows_per_chunk * W * N)
        out = None if grad else q.new_empty(B, N, nh, C)
        parts = []
        for r0 in range(0, H, rows_per_chunk):
            r1 = min(H, r0 + rows_per_chunk)
            row_parts = []
            for h0 in range(0, nh, heads):
                h1 = min(nh, h0 + heads)
                shape = (B, h1 - h0, (r1 - r0) * W, N)  # a contiguous view of the buffer's start
                chunk_buf = None if buf is None else buf[: shape[0] * shape[1] * shape[2] * N].view(shape)
                bias = _bias_block(rel_h[:, h0:h1, r0:r1], rel_w[:, h0:h1, r0:r1], chunk_buf)
                qc = q[:, h0:h1, r0 * W : r1 * W]
                if explicit:
                    res = _attend_explicit(qc, k[:, h0:h1], v[:, h0:h1], bias, self.scale, bias_is_scratch=not grad)
                else:
                    res = F.scaled_dot_product_attention(qc, k[:, h0:h1], v[:, h0:h1], attn_mask=bias, scale=self.scale)
                if out is None:
                    row_parts.append(res.transpose(1, 2))
                else:
                    out[:, r0 * W : r1 * W, h0:h1] = res.transpose(1, 2)
            if out is None:
                parts.append(torch.cat(row_parts, dim=2))
        return torch.cat(parts, dim=1) if out is None else out


def _bias_block(rel_h: torch.Tensor, rel_w: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Write ``rel_h[..., kh] + rel_w[..., kw]`` for every key (kh, kw) into ``out``.

    rel_h: (B, heads, r, W, H), rel_w: (B, heads, r, W, W) -> out (B, heads, r*W, H*W).
    ``out=None`` (autograd) allocates a new tensor instead.
    Small windows use a matmul with one-hot key indicators (short broadcast
    loops are slow); large grids a broadcast add written straight into the
    contiguous buffer (letting broadcasting choose the layout would follow the
    einsum's permuted strides: a slow add plus a copy).
    """
    B, nh, r, W, H = rel_h.shape
    if W * H <= _SMALL_GRID:
        keys = torch.arange(H * W, device=rel_h.device)
        ind = torch.cat([F.one_hot(keys // W, H), F.one_hot(keys % W, W)], dim=1).to(rel_h.dtype)  # (H*W, H+W)
        terms = torch.cat([rel_h, rel_w], dim=-1).reshape(-1, H + W)
        if out is None:
            return torch.matmul(terms, ind.T).view(B, nh, r * W, H * W)
        return torch.matmul(terms, ind.T, out=out.view(-1, H * W)).view(out.shape)
    if out is None:
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, r * W, H * W)
    torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out.view(B, nh, r, W, H, W))
    return out


def _attend_explicit(
    q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float, bias_is_scratch: bool = False
) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v with explicit batched matmuls.

    q: (B, heads, Lq, C), kt: (B, heads, C, Lk), v: (B, heads, Lk, C), bias: (B, heads, Lq, Lk)
    -> (B, heads, Lq, C). In bf16/fp16 on CPU the matmuls run on the native
    reduced-precision GEMM (oneDNN, AMX where present), which beats the fused
    SDPA kernel there; in fp32 the fused kernel is faster. ``bias_is_scratch``:
    the (contiguous) bias may be overwritten, so the scores are accumulated into it
    in place instead of into a copy of it.
    """
    B, nh, Lq, C = q.shape
    Lk = kt.shape[-1]
    q3, kt3 = q.reshape(B * nh, Lq, C), kt.reshape(B * nh, C, Lk)
    if bias_is_scratch:
        scores = bias.view(B * nh, Lq, Lk).baddbmm_(q3, kt3, alpha=scale)
    else:
        scores = torch.baddbmm(bias.reshape(B * nh, Lq, Lk), q3, kt3, alpha=scale)
    attn = torch.softmax(scores, dim=-1)
    del scores
    return torch.bmm(attn, v.reshape(B * nh, Lk, C)).view(B, nh, Lq, C)


# Largest bias block (elements) materialised at once by global attention (~64 MB in fp32).
_BIAS_CHUNK_ELEMS = 16 * 1024 * 1024
# The same in bf16/fp16, where blocks are also split over heads (~2 MB: stays in cache).
_EXPLICIT_CHUNK_ELEMS = 1024 * 1024
# Key grids up to this many tokens (14 x 14 windows) build their bias with a matmul and attend in one block.
_SMALL_GRID = 32 * 32


def window_partition(
    x: torch.Tensor, window_size: int, fill: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into non-overlapping windows, padding if needed.

    The padding is zero, or the (C,) vector ``fill`` at every padded position.
    Returns windows of shape (B * num_windows, ws, ws, C) and the padded (Hp, Wp).
    """
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if (pad_h > 0 or pad_w > 0) and fill is not None:
        padded = x.new_empty(B, H + pad_h, W + pad_w, C)  # one write of each element (two nested cats wrote twice)
        padded[:, :H, :W] = x
        padded[:, :H, W:] = fill
        padded[:, H:] = fill
        x = padded
    elif pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.reshape(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


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
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            # The per-token projections run on the H x W tokens only, not on the padding
            # that fills the last windows (64 -> 70 rows and columns at 1024 px: 16 % of
            # the tokens). A zero-padded token projects to the qkv bias, so the padding
            # is filled with that bias: the same windows the reference attends over.
            H, W = x.shape[1], x.shape[2]
            qkv = self.attn.qkv(x)
            qkv, pad_hw = window_partition(qkv, self.window_size, fill=self.attn.qkv.bias)
            x = window_unpartition(self.attn.attend(qkv), self.window_size, pad_hw, (H, W))
            x = self.attn.proj(x)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


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
