"""Fast kernels for the two-way transformer's attention: the linear maps folded onto the few prompt tokens.

The plain formulation is ``Attention.forward`` in ``transformer.py`` (project, split heads,
softmax(q k^T / sqrt(d)) v, merge heads, project). Where one side is a handful of prompt tokens
and the other the h*w image tokens, the linear maps around the attention are folded onto the
small side instead of projecting every image token (for a batch of B prompts this is most of
the decoder's work):

- few queries, many keys (tokens -> image): the key projection is folded into the queries and
  the value projection applied after the attention (softmax rows sum to 1, so the value bias
  passes through; the key bias shifts every score of a row equally and cancels);
- many queries, few keys (image -> tokens): the query projection is folded into the keys and the
  output projection into the values.

An image side of batch 1 is shared by all B prompts: it is projected once and never repeated B
times. Reduced precision: the image side may be bf16/fp16 while the prompt tokens are fp32 (see
``TwoWayTransformer.forward``'s ``compute_dtype``). Every product with the image side then runs
in its dtype (the small token-side operands are cast to it), and what returns to the tokens is
cast back to theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _as(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s dtype (no copy when they already match)."""
    return x if x.dtype == like.dtype else x.to(like.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` computed in ``x``'s dtype (a reduced-precision image side keeps its dtype)."""
    return F.linear(x, _as(layer.weight, x), None if layer.bias is None else _as(layer.bias, x))


def attention(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``Attention.forward``: (Bq, Nq, C) queries, (Bk, Nk, C) keys and values -> (B, Nq, C).

    Picks the layout by the sizes of the two sides; with ``residual`` the sum is fused into the
    last matrix product where the image side is large.
    """
    nq, nk = q.shape[1], k.shape[1]
    few = attn.num_heads * min(nq, nk)  # rows of the folded small side
    big, small = (k, q) if nq < nk else (q, k)
    shared = big.shape[0] == 1 and small.shape[0] > 1
    # fold when one side is the large image side, unless folding would cost more than projecting
    if 4 * few <= nq + nk and (shared or few <= attn.internal_dim):
        if nq >= nk:
            return many_queries(attn, q, k, v, residual)
        out = few_queries(attn, q, k, v)
    else:
        out = projected(attn, q, k, v)
    return out if residual is None else residual + out


def projected(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Every side projected, then the fused attention kernel (for sides of similar size)."""
    w = attn.q_proj.weight
    q, k, v = (_as(t, w) for t in (q, k, v))  # a reduced-precision side joins the weights' dtype
    q = attn._separate_heads(attn.q_proj(q))
    k = attn._separate_heads(attn.k_proj(k))
    v = attn._separate_heads(attn.v_proj(v))
    b = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]))
    b, h, n, c = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def _queries_to_projected_image(
    attn, q: torch.Tensor, qp: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor
) -> torch.Tensor:
    """Prompt tokens q (B, N, C), projected qp (B, N, H*d), attending to the projected heads kh, vh
    (1, H, HW, d) of a shared image side: every prompt's queries stacked into one product."""
    H = attn.num_heads
    B, N, _ = q.shape
    d = qp.shape[-1] // H
    qh = _as(qp.reshape(1, B * N, H, d).transpose(1, 2), kh)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=1.0 / math.sqrt(d))
    return attn.out_proj(_as(out.transpose(1, 2).reshape(B, N, H * d), q))


def few_queries(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Prompt tokens q (B, N, C) attending to image tokens k, v (1 or B, HW, C)."""
    H = attn.num_heads
    B, N, _ = q.shape
    qp = attn.q_proj(q)
    d = qp.shape[-1] // H
    scale = 1.0 / math.sqrt(d)
    if k.shape[0] == 1 and B > 1:  # shared image: project it once, stack every prompt's queries
        kh, vh = attn._separate_heads(_linear(k, attn.k_proj)), attn._separate_heads(_linear(v, attn.v_proj))
        return _queries_to_projected_image(attn, q, qp, kh, vh)
    C = k.shape[-1]
    qh = attn._separate_heads(qp)  # (B, H, N, d)
    qk = torch.einsum("bhnd,hdc->bchn", qh, attn.k_proj.weight.view(H, d, C)).reshape(B, C, H * N)
    # (HW, C) @ (C, H*N): the image side stays in its own layout (no transposed copy); the key
    # bias cancels. The small (HW, H*N) scores are then transposed once, so the softmax runs
    # along contiguous rows of HW (over a strided axis it is 1.5-4x slower on CPU).
    scores = torch.matmul(k, _as(qk, k)).transpose(1, 2).contiguous().mul_(scale)  # (B, H*N, HW)
    pv = torch.matmul(scores.softmax(dim=-1), v).view(B, H, N, C)
    out = torch.einsum("bhnc,hdc->bhnd", _as(pv, q), attn.v_proj.weight.view(H, d, C))
    out = out + attn.v_proj.bias.view(1, H, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, N, H * d))


def many_queries(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None,
    q_heads_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image tokens q (1 or B, HW, C) attending to prompt tokens k, v (B, N, C); plus ``residual`` if given.

    ``q_heads_t``: the query projection of a batch-1 ``q`` when already computed, as (1, H, d, HW).
    """
    H = attn.num_heads
    B, N, C = k.shape
    d = attn.internal_dim // H
    scale = 1.0 / math.sqrt(d)
    kh = attn._separate_heads(attn.k_proj(k))  # (B, H, N, d)
    vh = attn._separate_heads(attn.v_proj(v))
    HW = q.shape[1]
    if q_heads_t is not None:  # (H, B*N, d) @ (H, d, HW): the scores come out in the layout the softmax reads
        kt = _as(kh, q_heads_t).transpose(0, 1).reshape(H, B * N, d)
        scores = torch.matmul(kt, q_heads_t[0]).view(H, B, N, HW).transpose(0, 1)  # (B, H, N, HW)
        scores = scores if B == 1 else scores.contiguous()
    elif q.shape[0] == 1 and B > 1:  # shared image queries: project once, one product over all prompts' keys
        qh = attn._separate_heads(_linear(q, attn.q_proj))[0]  # (H, HW, d)
        scores = torch.bmm(qh, _as(kh.permute(1, 3, 0, 2).reshape(H, d, B * N), qh))  # (H, HW, B*N)
        scores = scores.view(H, HW, B, N).permute(2, 0, 3, 1).contiguous()  # (B, H, N, HW)
    else:  # fold the query projection into the keys: (HW, C) @ (C, H*N) instead of projecting HW queries
        kq = torch.einsum("bhnd,hdc->bchn", kh, attn.q_proj.weight.view(H, d, C)).reshape(B, C, H * N)
        kb = (kh * attn.q_proj.bias.view(1, H, 1, d)).sum(-1).reshape(B, 1, H * N)
        scores = torch.baddbmm(_as(kb, q), q, _as(kq, q))  # (B, HW, H*N)
        scores = scores.transpose(1, 2).contiguous().view(B, H, N, HW)
    # Softmax over each head's N prompt tokens along rows of HW contiguous scores: over a last
    # axis of N = 5-10 elements (the (HW, H*N) layout) torch's CPU kernels take 4-12x longer.
    # p is (B, HW, H*N) as a transposed view; the products below take it as is.
    p = scores.mul_(scale).softmax(dim=2).view(B, H * N, HW).transpose(1, 2)
    # out_proj(concat over heads of p_h @ v_h) == p @ (v_h @ W_o,h^T) + b_o; each head's
    # probabilities sum to 1, so adding b_o / H to every row of the product adds b_o
    u = torch.einsum("bhnd,chd->bhnc", vh, attn.out_proj.weight.view(C, H, d))
    u = _as((u + attn.out_proj.bias / H).reshape(B, H * N, C), p)
    if residual is None:
        return torch.bmm(p, u)
    return torch.baddbmm(residual, p, u)


@dataclass(frozen=True)
class PreparedImage:
    """The prompt-independent image side of the two-way transformer's first block.

    Without a mask prompt the first block's image tokens are the embedding plus the constant
    no-mask embedding: the same for every click on an image. Their projections (token -> image
    keys and values, image -> token queries) are made once per image here, with the arithmetic
    of the plain formulation's projections. All tensors are batch 1, in the image side's dtype:
    ``keys`` and ``keys_with_pe`` (1, HW, C), the token -> image keys and values (1, heads, HW, d),
    the image -> token queries transposed, (1, heads, d, HW), as the score product reads them.
    """

    keys: torch.Tensor
    keys_with_pe: torch.Tensor
    token_to_image_k: torch.Tensor
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor


def prepare_first_block(block, keys: torch.Tensor, key_pe: torch.Tensor) -> PreparedImage:
    """:class:`PreparedImage` of the first ``TwoWayAttentionBlock`` for image tokens ``keys`` (1, HW, C)."""
    k = keys + key_pe
    t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    return PreparedImage(
        keys, k, t2i._separate_heads(_linear(k, t2i.k_proj)), t2i._separate_heads(_linear(keys, t2i.v_proj)),
        i2t._separate_heads(_linear(k, i2t.q_proj)).transpose(2, 3).contiguous(),
    )


def first_block(block, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
                prepared: PreparedImage | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` of the first block, reading the image side from ``prepared``."""
    queries = block.norm1(block.self_attn(queries, queries, queries))
    q = queries + query_pe
    t2i = block.cross_attn_token_to_image
    attended = _queries_to_projected_image(t2i, q, t2i.q_proj(q), prepared.token_to_image_k, prepared.token_to_image_v)
    queries = block.norm2(queries + attended)
    queries = block.norm3(queries + block.mlp(queries))
    q = queries + query_pe
    keys = many_queries(block.cross_attn_image_to_token, prepared.keys_with_pe, q, queries, residual=prepared.keys,
                        q_heads_t=prepared.image_to_token_q)
    return queries, block.norm4(keys)
