"""SAM's two-way transformer: tokens attend to the image and the image to the tokens.

``Attention.forward`` is the plain formulation; its fast kernel (linear maps folded onto the few
prompt tokens, a batch-1 image side shared by all prompts) is in ``kernels/decoder_attention.py``
and runs unless :func:`~napari_sam.model.kernels.use_reference_paths` is active.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import MLPBlock
from .kernels import decoder_attention, fast_path


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width."""

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

    @fast_path(decoder_attention.attention)
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(Bq, Nq, C) queries, (Bk, Nk, C) keys and values -> (B, Nq, C); a batch of 1 broadcasts.

        With ``residual`` (broadcastable to the output), returns ``residual + attention``.
        Inputs of another dtype than the weights (a reduced-precision image side) are cast to it.
        """
        w = self.q_proj.weight
        q, k, v = (t.to(w.dtype) for t in (q, k, v))
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0])
        q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
        attn = (q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        out = attn @ v
        out = self.out_proj(out.transpose(1, 2).reshape(b, q.shape[2], -1))
        return out if residual is None else residual + out


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

    @fast_path(decoder_attention.first_block, applies=lambda *args, prepared=None: prepared is not None)
    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
        prepared: decoder_attention.PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) and image tokens ``keys`` (B or 1, h*w, C) -> the same, updated.

        ``keys`` and ``key_pe`` may be in a reduced dtype (bf16/fp16) and stay in it. ``prepared``
        (first block only): :meth:`TwoWayTransformer.prepare_image` of these ``keys`` and
        ``key_pe``, which the fast kernel reads instead of projecting the image side again.
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

    def image_tokens(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, compute_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B or 1, C, h, w) image and pe -> (B or 1, h*w, C) tokens in ``compute_dtype`` (``None``: as given).

        The token layout is made contiguous: every image-side product and sum then runs on plain
        row-major operands (an add of a permuted and a contiguous (4096, 256) tensor is ~20x
        slower on CPU than of two alike). No copy where the input is already channels-last (the
        predictor keeps its embedding so).
        """
        image_embedding = image_embedding.flatten(2).transpose(1, 2).contiguous()
        image_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        if compute_dtype is not None:  # the image side is cast once, here
            image_embedding, image_pe = image_embedding.to(compute_dtype), image_pe.to(compute_dtype)
        return image_embedding, image_pe

    def prepare_image(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, compute_dtype: torch.dtype | None = None
    ) -> decoder_attention.PreparedImage:
        """The first block's prompt-independent image side for a (1, C, h, w) image (embedding plus
        the dense prompt embedding shared by every prompt) and its pe, to pass to :meth:`forward`
        for every prompt on that image."""
        keys, key_pe = self.image_tokens(image_embedding, image_pe, compute_dtype)
        return decoder_attention.prepare_first_block(self.layers[0], keys, key_pe)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        compute_dtype: torch.dtype | None = None,
        prepared: decoder_attention.PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B or 1, C, h, w) image, (B or 1, C, h, w) pe, (B, N, C) tokens -> tokens, keys (B, h*w, C).

        A batch-1 image or pe is broadcast over the B prompt sets. ``compute_dtype``
        (e.g. ``torch.bfloat16``; ``None``: the inputs' dtype) is the dtype of the h*w
        image tokens: their stream through the layers (LayerNorm computes in fp32
        internally) and every product with them, most of the decoder's work. The
        prompt tokens stay in the inputs' dtype; the returned image tokens are in
        ``compute_dtype``. ``prepared``: :meth:`prepare_image` of this image (batch 1) and pe.
        """
        image_embedding, image_pe = self.image_tokens(image_embedding, image_pe, compute_dtype)
        queries, keys = point_embedding, image_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, image_pe, prepared=prepared if i == 0 else None)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
