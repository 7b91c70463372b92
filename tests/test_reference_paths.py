"""The model's fast paths against the plain reference computations of model/reference.py
(no segment_anything needed): encoder attention (windowed and global, fp32 and bf16), the
decoder's attention layouts and the whole mask decoder, and the mask upscaling."""

from __future__ import annotations

import pytest
import torch

from napari_sam.model import reference
from napari_sam.model.mask_decoder import upscale_masks


def _encoder_attentions(model):
    blocks = model.image_encoder.blocks
    return [b.attn for b in blocks if b.window_size > 0][:1] + [b.attn for b in blocks if b.window_size == 0][:1]


def test_encoder_attention_equals_the_plain_formulation(tiny_model):
    g = torch.Generator().manual_seed(0)
    attns = _encoder_attentions(tiny_model)
    assert len(attns) == 2  # one windowed, one global block
    for attn in attns:
        size = attn.rel_pos_h.shape[0] // 2 + 1
        x = torch.randn(2, size, size, attn.qkv.in_features, generator=g)
        with torch.inference_mode():
            want = reference.encoder_attention(attn, x)
            got = attn(x)
            torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = attn(x).float()
        assert (low - want).abs().max() <= 0.05 * float(want.abs().max())  # bf16 kernel: close, not exact


@pytest.mark.parametrize("batch, shared", [(1, True), (5, True), (5, False)])
def test_mask_decoder_equals_the_plain_formulation(tiny_model, batch, shared):
    g = torch.Generator().manual_seed(1)
    pe_mod = tiny_model.prompt_encoder
    c, (h, w) = pe_mod.embed_dim, pe_mod.image_embedding_size
    emb = torch.randn(1 if shared else batch, c, h, w, generator=g)
    coords = torch.rand(batch, 2, 2, generator=g) * tiny_model.image_encoder.img_size
    labels = torch.tensor([[1, 0]] * batch)
    with torch.inference_mode():
        sparse, dense = pe_mod(points=(coords, labels), boxes=None, masks=None)
        pe = pe_mod.get_dense_pe()
        for multimask in (True, False):
            want_low, want_iou = reference.mask_decoder(tiny_model.mask_decoder, emb, pe, sparse, dense, multimask)
            low, iou = tiny_model.mask_decoder(emb, pe, sparse, dense, multimask_output=multimask)
            scale = float(want_low.abs().max())
            torch.testing.assert_close(low, want_low, atol=1e-5 * scale, rtol=0)
            torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=0)


def test_decoder_attention_layouts_equal_the_plain_formulation(tiny_model):
    g = torch.Generator().manual_seed(2)
    attn = tiny_model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    c = attn.embedding_dim
    tokens, image = torch.randn(4, 7, c, generator=g), torch.randn(1, 256, c, generator=g)
    with torch.inference_mode():
        few = attn(tokens, image, image)  # few queries: projections folded onto the tokens
        many = attn(image.expand(4, -1, -1), tokens, tokens)  # many queries
        want_few = reference.decoder_attention(attn, tokens, image.expand(4, -1, -1), image.expand(4, -1, -1))
        want_many = reference.decoder_attention(attn, image.expand(4, -1, -1), tokens, tokens)
    torch.testing.assert_close(few, want_few, atol=1e-5 * float(want_few.abs().max()), rtol=0)
    torch.testing.assert_close(many, want_many, atol=1e-5 * float(want_many.abs().max()), rtol=0)


@pytest.mark.parametrize("separable", [True, False])
def test_mask_upscaling_equals_the_plain_formulation(separable):
    g = torch.Generator().manual_seed(3)
    low = torch.randn(3, 1, 64, 64, generator=g)
    want = reference.postprocess_masks(low, 256, (192, 256), (300, 400))
    got = upscale_masks(low, 256, (192, 256), (300, 400), separable=separable)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
