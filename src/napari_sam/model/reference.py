"""The reference computations: Segment Anything's plain formulation, as the readable definition.

The model's modules compute these results faster (attention in blocks with a fused or explicit
kernel, projections folded onto the small side, masks upscaled only where wanted; see
``image_encoder.py``, ``transformer.py`` and ``mask_decoder.py``). The functions here take the
same modules and weights and compute the same thing the way the original paper's code writes it,
with no layout tricks; ``tests/test_reference_paths.py`` checks the fast paths against them
(no ``segment_anything`` needed). They are for reading and testing, not for speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .image_encoder import Attention as EncoderAttention
from .image_encoder import get_rel_pos
from .mask_decoder import MaskDecoder
from .transformer import Attention as DecoderAttention
from .transformer import TwoWayTransformer


def add_decomposed_rel_pos(attn: torch.Tensor, q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           size: tuple[int, int]) -> torch.Tensor:
    """Scores (B*heads, H*W, H*W) plus the decomposed relative position bias of queries q (B*heads, H*W, C)."""
    h, w = size
    Rh, Rw = get_rel_pos(h, h, rel_pos_h), get_rel_pos(w, w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = attn.view(B, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(B, h * w, h * w)


def encoder_attention(attn: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """The image encoder's attention on x (B, H, W, dim): softmax(q k^T * scale + bias) v, then ``proj``."""
    B, H, W, _ = x.shape
    qkv = attn.qkv(x).reshape(B, H * W, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * attn.num_heads, H * W, -1).unbind(0)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        scores = add_decomposed_rel_pos(scores, q, attn.rel_pos_h, attn.rel_pos_w, (H, W))
    out = (scores.softmax(dim=-1) @ v).view(B, attn.num_heads, H, W, -1).permute(0, 2, 3, 1, 4)
    return attn.proj(out.reshape(B, H, W, -1))


def decoder_attention(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The two-way transformer's attention: project, split heads, softmax(q k^T / sqrt(c)) v, merge, project."""
    def heads(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)

    q, k, v = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    scores = (q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    out = scores @ v
    b, h, n, c = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def two_way_transformer(tf: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor,
                        tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) image, its (B, C, h, w) positional encoding and (B, N, C) tokens ->
    (tokens (B, N, C), image tokens (B, h*w, C))."""
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for layer in tf.layers:
        if layer.skip_first_layer_pe:
            queries = decoder_attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + decoder_attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + decoder_attention(layer.cross_attn_token_to_image, q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + key_pe
        keys = layer.norm4(keys + decoder_attention(layer.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + key_pe
    queries = tf.norm_final_attn(queries + decoder_attention(tf.final_attn_token_to_image, q, k, keys))
    return queries, keys


def mask_decoder(decoder: MaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                 sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``decoder(...)`` returns: low-res mask logits (B, M, 4h, 4w) and IoU predictions (B, M),
    with the image embedding repeated per prompt and every mask upscaled in full."""
    B = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(B, -1, -1), sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, B // image_embeddings.shape[0], dim=0) + dense
    pos = torch.repeat_interleave(image_pe, B, dim=0)
    b, c, h, w = src.shape
    hs, src = two_way_transformer(decoder.transformer, src, pos, tokens)
    iou_token_out, mask_tokens_out = hs[:, 0, :], hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou = decoder.iou_prediction_head(iou_token_out)
    which = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, which], iou[:, which]


def postprocess_masks(masks: torch.Tensor, img_size: int, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """Low-res logits (B, M, 4h, 4w) -> (B, M, H, W) at the original image size: bilinear to the
    padded input, crop the padding, bilinear to the original size."""
    masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


__all__ = ["add_decomposed_rel_pos", "decoder_attention", "encoder_attention", "mask_decoder",
           "postprocess_masks", "two_way_transformer"]
