"""Fast kernels for the ViT image encoder's attention with its decomposed relative-position bias.

The plain formulation is ``Attention.forward`` and ``Block.attention`` in ``image_encoder.py``:
scores ``q k^T * scale`` plus the bias, softmax, times ``v``, with windows partitioned before the
projection. Here the same result is computed

- with the bias as an additive mask of the fused ``scaled_dot_product_attention`` in fp32, and
  with explicit batched matmuls in bf16/fp16 (faster on CPU there);
- in blocks of query rows (and heads): global blocks materialise the bias for at most
  ``_BIAS_CHUNK_ELEMS`` elements at once, so no (heads, tokens, tokens) matrix is ever held in
  full (a few hundred MB for vit_b at 1024 px instead of several GB);
- for windowed blocks, with the qkv projection run on the H x W tokens before partitioning, the
  padding filled with the qkv bias (what a zero-padded token projects to).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import get_rel_pos, window_partition, window_unpartition

# Largest bias block (elements) materialised at once by global attention (~64 MB in fp32).
_BIAS_CHUNK_ELEMS = 16 * 1024 * 1024
# The same in bf16/fp16, where blocks are also split over heads (~2 MB: stays in cache).
_EXPLICIT_CHUNK_ELEMS = 1024 * 1024
# Key grids up to this many tokens (14 x 14 windows) build their bias with a matmul and attend in one block.
_SMALL_GRID = 32 * 32


def attention(attn, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward``: x (B, H, W, dim) -> (B, H, W, dim)."""
    return attn.proj(attend(attn, attn.qkv(x)))


def block_attention(block, x: torch.Tensor) -> torch.Tensor:
    """``Block.attention``: the (windowed or global) attention of normalised tokens x (B, H, W, dim).

    The per-token projections run on the H x W tokens only, not on the padding that fills the
    last windows (64 -> 70 rows and columns at 1024 px: 16 % of the tokens). A zero-padded token
    projects to the qkv bias, so the padding is filled with that bias: the same windows the plain
    formulation attends over.
    """
    ws = block.window_size
    if ws == 0:
        return attention(block.attn, x)
    H, W = x.shape[1], x.shape[2]
    qkv, pad_hw = window_partition(block.attn.qkv(x), ws, fill=block.attn.qkv.bias)
    return block.attn.proj(window_unpartition(attend(block.attn, qkv), ws, pad_hw, (H, W)))


def attend(attn, qkv: torch.Tensor) -> torch.Tensor:
    """Attention from the projected (B, H, W, 3 * dim) queries, keys and values; (B, H, W, dim) before ``proj``."""
    B, H, W, _ = qkv.shape
    N = H * W
    qkv = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    else:
        out = _attend_with_rel_pos(attn, q, k, v, H, W)
    return out.reshape(B, H, W, -1)


def _rel_terms(attn, q: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed bias terms: (B, heads, H, W, H) over key rows and (B, heads, H, W, W) over key columns."""
    B, nh, N, C = q.shape
    Rh = get_rel_pos(H, H, attn.rel_pos_h).to(q.dtype)  # (H, H, C)
    Rw = get_rel_pos(W, W, attn.rel_pos_w).to(q.dtype)  # (W, W, C)
    r_q = q.reshape(B, nh, H, W, C)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).contiguous()
    return rel_h, rel_w


def _attend_with_rel_pos(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Attention with the additive decomposed bias; returns (B, N, heads, head_dim).

    The bias for a block of query rows is materialised only for that block
    (at most ``_BIAS_CHUNK_ELEMS`` elements), so global attention over
    64 x 64 tokens never holds a full (heads, N, N) matrix.
    """
    B, nh, N, C = q.shape
    rel_h, rel_w = _rel_terms(attn, q, H, W)
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
                res = _attend_explicit(qc, k[:, h0:h1], v[:, h0:h1], bias, attn.scale, bias_is_scratch=not grad)
            else:
                res = F.scaled_dot_product_attention(qc, k[:, h0:h1], v[:, h0:h1], attn_mask=bias, scale=attn.scale)
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
