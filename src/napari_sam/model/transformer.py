"""SAM's two-way transformer: tokens attend to the image and the image to the tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


def _as(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s dtype (no copy when they already match)."""
    return x if x.dtype == like.dtype else x.to(like.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` computed in ``x``'s dtype (a reduced-precision image side keeps its dtype)."""
    return F.linear(x, _as(layer.weight, x), None if layer.bias is None else _as(layer.bias, x))


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width.

    Computes exactly SAM's attention (up to float rounding), but where one side is a
    handful of prompt tokens and the other the h*w image tokens, the linear maps
    around the attention are folded onto the small side instead of projecting every
    image token (for a batch of B prompts this is most of the decoder's work):

    - few queries, many keys (tokens -> image): the key projection is folded into
      the queries and the value projection applied after the attention (softmax
      rows sum to 1, so the value bias passes through; the key bias shifts every
      score of a row equally and cancels);
    - many queries, few keys (image -> tokens): the query projection is folded into
      the keys and the output projection into the values.

    An image side of batch 1 is shared by all B prompts: it is projected once and
    never repeated B times.

    Reduced precision: the image side may be bf16/fp16 while the prompt tokens are
    fp32 (see :meth:`TwoWayTransformer.forward`'s ``compute_dtype``). Every product
    with the image side then runs in its dtype (the small token-side operands are
    cast to it), and what returns to the tokens is cast back to theirs.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(Bq, Nq, C) queries, (Bk, Nk, C) keys and values -> (B, Nq, C); a batch of 1 broadcasts.

        With ``residual`` (broadcastable to the output), returns ``residual + attention``
        (fused into the last matrix product where the image side is large).
        """
        nq, nk = q.shape[1], k.shape[1]
        few = self.num_heads * min(nq, nk)  # rows of the folded small side
        big, small = (k, q) if nq < nk else (q, k)
        shared = big.shape[0] == 1 and small.shape[0] > 1
        # fold when one side is the large image side, unless folding would cost more than projecting
        if 4 * few <= nq + nk and (shared or few <= self.internal_dim):
            if nq >= nk:
                return self._many_queries(q, k, v, residual)
            out = self._few_queries(q, k, v)
        else:
            out = self._plain(q, k, v)
        return out if residual is None else residual + out

    def _plain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        w = self.q_proj.weight
        q, k, v = (_as(t, w) for t in (q, k, v))  # a reduced-precision side joins the weights' dtype
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]))
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Prompt tokens q (B, N, C) attending to image tokens k, v (1 or B, HW, C)."""
        H = self.num_heads
        B, N, _ = q.shape
        qp = self.q_proj(q)
        d = qp.shape[-1] // H
        scale = 1.0 / math.sqrt(d)
        if k.shape[0] == 1 and B > 1:  # shared image: project it once, stack every prompt's queries
            qh = _as(qp.reshape(1, B * N, H, d).transpose(1, 2), k)
            out = F.scaled_dot_product_attention(
                qh, self._separate_heads(_linear(k, self.k_proj)), self._separate_heads(_linear(v, self.v_proj)),
                scale=scale,
            )
            return self.out_proj(_as(out.transpose(1, 2).reshape(B, N, H * d), q))
        C = k.shape[-1]
        qh = self._separate_heads(qp)  # (B, H, N, d)
        qk = torch.einsum("bhnd,hdc->bchn", qh, self.k_proj.weight.view(H, d, C)).reshape(B, C, H * N)
        # (HW, C) @ (C, H*N): the image side stays in its own layout (no transposed copy); the key
        # bias cancels. The small (HW, H*N) scores are then transposed once, so the softmax runs
        # along contiguous rows of HW (over a strided axis it is 1.5-4x slower on CPU).
        scores = torch.matmul(k, _as(qk, k)).transpose(1, 2).contiguous().mul_(scale)  # (B, H*N, HW)
        pv = torch.matmul(scores.softmax(dim=-1), v).view(B, H, N, C)
        out = torch.einsum("bhnc,hdc->bhnd", _as(pv, q), self.v_proj.weight.view(H, d, C))
        out = out + self.v_proj.bias.view(1, H, 1, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, H * d))

    def _many_queries(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """Image tokens q (1 or B, HW, C) attending to prompt tokens k, v (B, N, C)."""
        H = self.num_heads
        B, N, C = k.shape
        d = self.internal_dim // H
        scale = 1.0 / math.sqrt(d)
        kh = self._separate_heads(self.k_proj(k))  # (B, H, N, d)
        vh = self._separate_heads(self.v_proj(v))
        HW = q.shape[1]
        if q.shape[0] == 1 and B > 1:  # shared image queries: project once, one product over all prompts' keys
            qh = self._separate_heads(_linear(q, self.q_proj))[0]  # (H, HW, d)
            scores = torch.bmm(qh, _as(kh.permute(1, 3, 0, 2).reshape(H, d, B * N), qh))  # (H, HW, B*N)
            scores = scores.view(H, HW, B, N).permute(2, 0, 3, 1).contiguous()  # (B, H, N, HW)
        else:  # fold the query projection into the keys: (HW, C) @ (C, H*N) instead of projecting HW queries
            kq = torch.einsum("bhnd,hdc->bchn", kh, self.q_proj.weight.view(H, d, C)).reshape(B, C, H * N)
            kb = (kh * self.q_proj.bias.view(1, H, 1, d)).sum(-1).reshape(B, 1, H * N)
            scores = torch.baddbmm(_as(kb, q), q, _as(kq, q))  # (B, HW, H*N)
            scores = scores.transpose(1, 2).contiguous().view(B, H, N, HW)
        # Softmax over each head's N prompt tokens along rows of HW contiguous scores: over a last
        # axis of N = 5-10 elements (the (HW, H*N) layout) torch's CPU kernels take 4-12x longer.
        # p is (B, HW, H*N) as a transposed view; the products below take it as is.
        p = scores.mul_(scale).softmax(dim=2).view(B, H * N, HW).transpose(1, 2)
        # out_proj(concat over heads of p_h @ v_h) == p @ (v_h @ W_o,h^T) + b_o; each head's
        # probabilities sum to 1, so adding b_o / H to every row of the product adds b_o
        u = torch.einsum("bhnd,chd->bhnc", vh, self.out_proj.weight.view(C, H, d))
        u = _as((u + self.out_proj.bias / H).reshape(B, H * N, C), p)
        if residual is None:
            return torch.bmm(p, u)
        return torch.baddbmm(residual, p, u)


class TwoWayAttentionBlock(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) and image tokens ``keys`` (B or 1, h*w, C) -> the same, updated.

        ``keys`` and ``key_pe`` may be in a reduced dtype (bf16/fp16) and stay in it.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        k = keys + key_pe  # the same image side for both cross attentions
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token(k, q, queries, residual=keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, attention_downsample_rate, skip_first_layer_pe=(i == 0)
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B or 1, C, h, w) image, (B or 1, C, h, w) pe, (B, N, C) tokens -> tokens, keys (B, h*w, C).

        A batch-1 image or pe is broadcast over the B prompt sets. ``compute_dtype``
        (e.g. ``torch.bfloat16``; ``None``: the inputs' dtype) is the dtype of the h*w
        image tokens: their stream through the layers (LayerNorm computes in fp32
        internally) and every product with them, most of the decoder's work. The
        prompt tokens stay in the inputs' dtype; the returned image tokens are in
        ``compute_dtype``.
        """
        # (B, h*w, C) token layout, contiguous: every image-side product and sum below then
        # runs on plain row-major operands (an add of a permuted and a contiguous
        # (4096, 256) tensor is ~20x slower on CPU than of two alike). No copy where the
        # input is already channels-last (the predictor keeps its embedding so).
        image_embedding = image_embedding.flatten(2).transpose(1, 2).contiguous()
        image_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        if compute_dtype is not None:  # the image side is cast once, here
            image_embedding, image_pe = image_embedding.to(compute_dtype), image_pe.to(compute_dtype)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
