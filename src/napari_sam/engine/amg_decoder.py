"""Mask decoding of many single-image prompts at once, sharing the image-side work.

Computes exactly what ``model.mask_decoder`` computes (up to float rounding) for
B prompts on one image embedding, cheaper:

- the first two-way block's image-side inputs (image embedding + dense prompt
  embedding, plus positional encoding) are the same for every prompt, so their
  projections are computed once instead of B times, and the image embedding is
  never repeated B times;
- linear maps around attention are folded into the attention where that is
  smaller: a token-to-image attention works on (tokens x channels) instead of
  projecting all h*w image tokens of every prompt (softmax rows sum to 1, so a
  value projection's bias passes through), and an image-to-token attention's
  output projection is applied to the few token values instead of to h*w
  outputs;
- the IoU head needs no upscaling, so the upscaled mask logits are computed
  only for the prompts the caller asks for (e.g. those with a mask whose
  predicted IoU passes a threshold).

Used by automatic mask generation; works on the model's own modules and
weights (``napari_sam.model.mask_decoder.MaskDecoder`` with a
``TwoWayTransformer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..model.mask_decoder import MaskDecoder
from ..model.transformer import Attention, TwoWayTransformer


def supports_fast_decoding(decoder: torch.nn.Module) -> bool:
    """True for an unmodified :class:`MaskDecoder` whose transformer is a :class:`TwoWayTransformer`."""
    return (
        type(decoder) is MaskDecoder
        and "forward" not in vars(decoder)
        and type(decoder.transformer) is TwoWayTransformer
        and "forward" not in vars(decoder.transformer)
    )


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, n_heads, c // n_heads).transpose(1, 2)


def _token_to_image(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attn(q, k, v)`` for tokens q (B, N, C) attending to image tokens k, v (1 or B, HW, C)."""
    H = attn.num_heads
    B, N, _ = q.shape
    qp = attn.q_proj(q)
    d = qp.shape[-1] // H
    scale = 1.0 / math.sqrt(d)
    if k.shape[0] == 1:  # shared image: stack every prompt's tokens into one query set
        qh = qp.reshape(1, B * N, H, d).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(
            qh, _heads(attn.k_proj(k), H), _heads(attn.v_proj(v), H), scale=scale
        )
        return attn.out_proj(out.transpose(1, 2).reshape(B, N, H * d))
    C = k.shape[-1]
    qh = _heads(qp, H)  # (B, H, N, d)
    wk = attn.k_proj.weight.view(H, d, C)
    qk = torch.einsum("bhnd,hdc->bhnc", qh, wk).reshape(B, H * N, C)
    bias = (qh * attn.k_proj.bias.view(1, H, 1, d)).sum(-1).reshape(B, H * N, 1)
    scores = torch.baddbmm(bias, qk, k.transpose(1, 2)).mul_(scale)  # (B, H*N, HW)
    p = scores.softmax(dim=-1)
    pv = torch.bmm(p, v).view(B, H, N, C)
    out = torch.einsum("bhnc,hdc->bhnd", pv, attn.v_proj.weight.view(H, d, C)) + attn.v_proj.bias.view(1, H, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, N, H * d))


def _image_to_token(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attn(q, k, v)`` for image tokens q (1 or B, HW, C) attending to tokens k, v (B, N, C)."""
    H = attn.num_heads
    B, N, _ = k.shape
    qp = attn.q_proj(q)
    HW = qp.shape[1]
    d = qp.shape[-1] // H
    C = attn.out_proj.weight.shape[0]
    kh = _heads(attn.k_proj(k), H)  # (B, H, N, d)
    vh = _heads(attn.v_proj(v), H)
    # scores laid out (..., N, HW) so the softmax over the few tokens runs along a strided axis (fast)
    if qp.shape[0] == 1:  # shared image queries: one matmul over all prompts' keys
        qh = _heads(qp, H)[0]  # (H, HW, d)
        scores = torch.bmm(kh.permute(1, 0, 2, 3).reshape(H, B * N, d), qh.transpose(1, 2))  # (H, B*N, HW)
        p = scores.mul_(1.0 / math.sqrt(d)).view(H, B, N, HW).softmax(dim=2).permute(1, 0, 2, 3)
        p = p.reshape(B, H * N, HW)
    else:
        scores = torch.matmul(kh, _heads(qp, H).transpose(2, 3))  # (B, H, N, HW)
        p = scores.mul_(1.0 / math.sqrt(d)).softmax(dim=2).reshape(B, H * N, HW)
    # out_proj(concat over heads of p_h^T @ v_h) == p^T @ (v_h @ W_o,h^T) + b_o
    u = torch.einsum("bhnd,chd->bhnc", vh, attn.out_proj.weight.view(C, H, d)).reshape(B, H * N, C)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, C), p.transpose(1, 2), u)


def _upscale(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)`` for the decoder's (ConvT, LayerNorm2d, GELU, ConvT, GELU); LayerNorm2d via F.layer_norm."""
    mods = list(seq)
    ln = mods[1] if len(mods) == 5 else None
    if ln is None or not hasattr(ln, "eps") or type(ln).__name__ != "LayerNorm2d":
        return seq(x)
    x = mods[0](x)
    x = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), ln.weight, ln.bias, ln.eps)
    x = mods[2](x.permute(0, 3, 1, 2))
    return mods[4](mods[3](x))


def decode_shared_image(
    decoder: MaskDecoder,
    image_embedding: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    select: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multimask decoding of B prompts on one image.

    Args:
        decoder: the model's mask decoder.
        image_embedding: (1, C, h, w).  image_pe: (1, C, h, w).
        sparse: (B, K, C) prompt tokens.  dense: (1, C, h, w), the dense embedding
            shared by all prompts (no mask inputs).
        select: maps the multimask IoU predictions (B, 3) to the indices (n,) of
            the prompts whose mask logits are wanted.
    Returns:
        iou_predictions (B, 3), the selected prompt indices (n,), and their
        low-res mask logits (n, 3, 4h, 4w).
    """
    t = decoder.transformer
    B = sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(B, -1, -1).to(sparse.dtype), sparse], dim=1)
    _, c, h, w = image_embedding.shape
    keys = (image_embedding + dense).flatten(2).permute(0, 2, 1)  # (1, HW, C)
    pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, qpe = tokens, tokens
    for layer in t.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + qpe
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        kpe = keys + pe
        queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, queries + qpe, kpe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _image_to_token(layer.cross_attn_image_to_token, kpe, queries + qpe, queries))
    queries = t.norm_final_attn(
        queries + _token_to_image(t.final_attn_token_to_image, queries + qpe, keys + pe, keys)
    )
    iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]
    idx = select(iou)
    if len(idx) == 0:
        return iou, idx, torch.zeros(0, 3, 4 * h, 4 * w, dtype=keys.dtype, device=keys.device)
    if keys.shape[0] == 1:  # a transformer without blocks: nothing prompt-specific in the image tokens
        keys = keys.expand(B, -1, -1)
    sel = keys if len(idx) == B and bool((idx == torch.arange(B, device=idx.device)).all()) else keys[idx]
    src = sel.reshape(len(idx), h, w, c).permute(0, 3, 1, 2)  # channels-last view, no copy
    upscaled = _upscale(decoder.output_upscaling, src)
    mask_tokens = queries[idx, 1 : 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    n, cu, hu, wu = upscaled.shape
    masks = (hyper_in[:, 1:] @ upscaled.reshape(n, cu, hu * wu)).reshape(n, -1, hu, wu)
    return iou, idx, masks
