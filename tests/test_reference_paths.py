"""The fast kernels (model/kernels/) against the plain formulation written in the model's modules.

Each test computes the same thing twice, once with the kernels (the default) and once inside
``use_reference_paths()``, on random weights and several sizes; no segment_anything needed
(the last test also checks the plain paths against Meta's modules where that package exists)."""

from __future__ import annotations

import pytest
import torch

from conftest import perturbed_state_dict
from napari_sam.model.image_encoder import Attention as EncoderAttention
from napari_sam.model.image_encoder import Block
from napari_sam.model.kernels import fast_path, fast_paths_enabled, use_reference_paths
from napari_sam.model.mask_decoder import MaskDecoder, upscale_masks
from napari_sam.model.transformer import Attention as DecoderAttention


def _both(fn):
    """fn() with the fast kernels and with the plain formulation (no autograd)."""
    with torch.inference_mode():
        fast = fn()
        with use_reference_paths():
            plain = fn()
    return fast, plain


def _close(fast, plain, rel=1e-5):
    scale = max(1.0, float(plain.abs().max()))
    assert fast.shape == plain.shape and fast.dtype == plain.dtype
    torch.testing.assert_close(fast, plain, atol=rel * scale, rtol=0)


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    module.load_state_dict(perturbed_state_dict(module, seed=seed, scale=0.2))  # rel-pos tables start at zero
    return module.eval()


def test_the_switch_is_one_process_wide_setting_that_nests():
    assert fast_paths_enabled()
    with use_reference_paths():
        assert not fast_paths_enabled()
        with use_reference_paths(False):
            assert fast_paths_enabled()
        assert not fast_paths_enabled()
    assert fast_paths_enabled()
    with pytest.raises(RuntimeError), use_reference_paths():
        raise RuntimeError("left by an exception")
    assert fast_paths_enabled()


def test_the_switch_selects_the_kernel_or_the_plain_code():
    @fast_path(lambda x, big=False: ("kernel", x), applies=lambda x, big=False: not big)
    def compute(x, big=False):
        return ("plain", x)

    assert compute(1) == ("kernel", 1) and compute(1, big=True) == ("plain", 1)  # applies= limits the kernel
    with use_reference_paths():
        assert compute(2) == ("plain", 2)
    assert compute.plain(3) == ("plain", 3) and compute.kernel(3) == ("kernel", 3)
    for method in (EncoderAttention.forward, Block.attention, DecoderAttention.forward, MaskDecoder.masks_from,
                   upscale_masks):
        assert method.kernel.__module__.startswith("napari_sam.model.kernels.")


@pytest.mark.parametrize("rel_pos", [True, False])
@pytest.mark.parametrize("hw", [(14, 14), (9, 13), (40, 40)])  # a window, an odd grid, a large global grid
def test_encoder_attention(rel_pos, hw):
    dim, heads = 48, 3
    attn = _perturbed(EncoderAttention(dim, heads, True, rel_pos, hw), 1)
    x = torch.randn(2, *hw, dim, generator=torch.Generator().manual_seed(2))
    _close(*_both(lambda: attn(x)))


@pytest.mark.parametrize("window", [0, 7])
@pytest.mark.parametrize("size", [16, 19])  # 19: windows padded at the border
def test_encoder_block_windowed_and_global(window, size):
    dim = 32
    block = _perturbed(Block(dim, 4, 2.0, True, True, window, (size, size)), 3)
    x = torch.randn(1, size, size, dim, generator=torch.Generator().manual_seed(4))
    _close(*_both(lambda: block(x)))


def test_whole_encoder(tiny_model):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    _close(*_both(lambda: tiny_model.image_encoder(x)), rel=1e-4)


def test_encoder_attention_in_bf16_is_close_to_the_plain_fp32():
    attn = _perturbed(EncoderAttention(48, 3, True, True, (40, 40)), 1)
    x = torch.randn(1, 40, 40, 48, generator=torch.Generator().manual_seed(2))
    plain = _both(lambda: attn(x))[1]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x).float()  # the explicit-matmul kernel
    assert float((low - plain).abs().max()) <= 0.05 * float(plain.abs().max())  # bf16: close, not exact


@pytest.mark.parametrize("batch, shared", [(1, True), (4, True), (4, False)])
@pytest.mark.parametrize("tokens, pixels", [(7, 256), (5, 1024), (12, 64)])
def test_decoder_attention_few_and_many_queries(batch, shared, tokens, pixels):
    c = 128  # 8 heads of 8: every layout of the kernel runs among these sizes
    attn = _perturbed(DecoderAttention(c, 8, downsample_rate=2), 6)
    g = torch.Generator().manual_seed(7)
    t = torch.randn(batch, tokens, c, generator=g)
    img = torch.randn(1 if shared else batch, pixels, c, generator=g)
    res = torch.randn(1 if shared else batch, pixels, c, generator=g)
    _close(*_both(lambda: attn(t, img, img)))  # few queries: tokens -> image
    _close(*_both(lambda: attn(img, t, t)))  # many queries: image -> tokens
    _close(*_both(lambda: attn(img, t, t, residual=res)))  # with the fused residual
    _close(*_both(lambda: attn(t, t, t)))  # self-attention of the tokens


def _decoder_inputs(model, batch, shared, seed, mask_prompt=False):
    g = torch.Generator().manual_seed(seed)
    pe_mod = model.prompt_encoder
    c, (h, w) = pe_mod.embed_dim, pe_mod.image_embedding_size
    emb = torch.randn(1 if shared else batch, c, h, w, generator=g)
    coords = torch.rand(batch, 2, 2, generator=g) * model.image_encoder.img_size
    labels = torch.tensor([[1, 0]] * batch)
    masks = torch.randn(batch, 1, 4 * h, 4 * w, generator=g) if mask_prompt else None
    with torch.inference_mode():
        sparse, dense = pe_mod(points=(coords, labels), boxes=None, masks=masks)
    return emb, pe_mod.get_dense_pe(), sparse, dense


@pytest.mark.parametrize("batch, shared, mask_prompt", [(1, True, False), (5, True, False), (5, False, False),
                                                       (3, True, True)])
@pytest.mark.parametrize("multimask", [True, False])
def test_whole_mask_decoder(tiny_model, batch, shared, mask_prompt, multimask):
    emb, pe, sparse, dense = _decoder_inputs(tiny_model, batch, shared, 8, mask_prompt)
    (low, iou), (want_low, want_iou) = _both(lambda: tiny_model.mask_decoder(emb, pe, sparse, dense, multimask))
    _close(low, want_low)
    _close(iou, want_iou)


def test_decode_shared_image_equals_the_plain_decoder(tiny_model):
    emb, pe, sparse, dense = _decoder_inputs(tiny_model, 6, True, 9)
    dec = tiny_model.mask_decoder
    with torch.inference_mode():
        iou, idx, low = dec.decode_shared_image(emb, pe, sparse, dense[:1], lambda q: torch.tensor([4, 1, 3]))
        with use_reference_paths():
            want_low, want_iou = dec(emb, pe, sparse, dense, True)
    _close(iou, want_iou)
    assert idx.tolist() == [4, 1, 3]
    _close(low, want_low[idx])


@pytest.mark.parametrize("n, shared", [(1, True), (3, True), (3, False)])
@pytest.mark.parametrize("which", [slice(None), slice(1, None), slice(0, 1)])
def test_mask_head(tiny_model, n, shared, which):
    dec = tiny_model.mask_decoder
    g = torch.Generator().manual_seed(10)
    h, w = 16, 24
    src = torch.randn(1 if shared else n, h * w, 128, generator=g)
    tokens = torch.randn(n, 6, 128, generator=g)
    _close(*_both(lambda: dec.masks_from(src, tokens, (h, w), which)))


@pytest.mark.parametrize("threshold", [None, 0.0, 0.5])  # logits, the region kernel, a full threshold
@pytest.mark.parametrize("low_hw, img_size, input_size, original", [
    ((64, 64), 256, (192, 256), (300, 400)),
    ((64, 64), 256, (256, 171), (1000, 668)),
    ((32, 32), 128, (128, 128), (50, 50)),
])
def test_mask_upscaling_region_and_full(threshold, low_hw, img_size, input_size, original):
    g = torch.Generator().manual_seed(11)
    low = torch.randn(2, 3, *low_hw, generator=g) - 1.0
    low[0, 0] = -1.0  # no positive logit: an empty region
    fast, plain = _both(lambda: upscale_masks(low, img_size, input_size, original, threshold))
    if threshold is None:
        _close(fast, plain)
    else:  # float rounding may flip a pixel whose logit is within rounding of the threshold
        logits = _both(lambda: upscale_masks(low, img_size, input_size, original))[1]
        unsure = (logits - threshold).abs() < 1e-5
        assert fast.dtype == torch.bool and torch.equal(fast[~unsure], plain[~unsure])
        assert not bool(fast[0, 0].any())


def test_plain_paths_equal_metas_modules():
    """The plain formulation in the modules is Meta's: same weights, same outputs."""
    pytest.importorskip("segment_anything")
    from reference_models import reference_sam

    from napari_sam import build_sam
    from napari_sam.model.config import TINY

    torch.manual_seed(0)
    ref = reference_sam(TINY)
    sd = perturbed_state_dict(ref, seed=3)
    ref.load_state_dict(sd)
    ours = build_sam("tiny")
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode(), use_reference_paths():
        emb, want_emb = ours.image_encoder(x), ref.image_encoder(x)
        _close(emb, want_emb, rel=1e-4)
        points = (torch.tensor([[[40.0, 60.0], [100.0, 30.0]]]), torch.tensor([[1, 0]]))
        sparse, dense = ours.prompt_encoder(points=points, boxes=None, masks=None)
        pe = ours.prompt_encoder.get_dense_pe()
        low, iou = ours.mask_decoder(want_emb, pe, sparse, dense, True)
        want_low, want_iou = ref.mask_decoder(want_emb, pe, sparse, dense, True)
        _close(low, want_low, rel=1e-4)
        _close(iou, want_iou, rel=1e-4)
        up = upscale_masks(low, 256, (192, 256), (300, 400))
        _close(up, ref.postprocess_masks(low, (192, 256), (300, 400)))
