"""Memory-bounded paths of the engine: chunked global attention, chunked mask upscaling, no leak.

The vit_b peak-RSS numbers are measured in benchmarks/bench_engine.py; here the
chunked code paths are checked against their unchunked equivalents with the
small 'tiny' model, and repeated embedding is checked not to grow the process.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.engine.prediction.predictor import SamPredictor
from napari_sam.model.kernels import encoder_attention as ie
from napari_sam.model.mask_decoder import upscale_masks


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def test_chunked_global_attention_matches_one_block(tiny_model, monkeypatch):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = tiny_model.image_encoder(x)
        # force many small query chunks (a few rows each) in the global blocks
        monkeypatch.setattr(ie, "_BIAS_CHUNK_ELEMS", 3 * 16 * 256)
        chunked = tiny_model.image_encoder(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def _reference_attention(q, k, v, rel_h, rel_w, scale):
    """Meta's formulation: full (tokens x tokens) scores plus the decomposed bias."""
    B, nh, N, C = q.shape
    H, W = rel_h.shape[2], rel_h.shape[3]
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.view(B, nh, H, W, H, W) + rel_h[..., :, None] + rel_w[..., None, :]
    return attn.view(B, nh, N, N).softmax(-1) @ v


@pytest.mark.parametrize("hw", [(5, 7), (40, 40)])  # small grid: one-hot matmul bias; large: broadcast add
def test_bias_and_explicit_attention_match_reference(hw):
    H, W = hw
    g = torch.Generator().manual_seed(1)
    B, nh, C = 2, 3, 8
    q, k, v = (torch.randn(B, nh, H * W, C, generator=g) for _ in range(3))
    rel_h = torch.randn(B, nh, H, W, H, generator=g)
    rel_w = torch.randn(B, nh, H, W, W, generator=g)
    expected = _reference_attention(q, k, v, rel_h, rel_w, C**-0.5)
    bias = ie._bias_block(rel_h, rel_w, torch.empty(B, nh, H * W, H * W))
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=C**-0.5)
    kt = k.reshape(B * nh, H * W, C).transpose(1, 2).contiguous()
    explicit = ie._attend_explicit(q, kt, v.reshape(B * nh, H * W, C), bias, C**-0.5)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("threshold", [None, 0.0])
@pytest.mark.parametrize(
    "input_size, original_size",
    [((192, 256), (150, 200)), ((256, 171), (600, 400)), ((255, 256), (999, 1001)), ((3, 256), (2, 180)),
     ((256, 256), (256, 256))],
)
def test_chunked_upscale_equals_postprocess(tiny_model, threshold, input_size, original_size):
    """The interpolation path is bit-identical to the reference's upscale-crop-resize (cropped-rows
    shortcut included); the separable sparse path (CPU default) equals it up to float rounding."""
    g = torch.Generator().manual_seed(2)
    low = torch.randn(5, 3, 64, 64, generator=g)
    logits = tiny_model.postprocess_masks(low, input_size, original_size)
    expected = logits > threshold if threshold is not None else logits
    got = upscale_masks(low, 256, input_size, original_size, threshold=threshold, chunk_pixels=256 * 256 * 2,
                        separable=False)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)

    sep = upscale_masks(low, 256, input_size, original_size, threshold=threshold, separable=True)
    assert sep.dtype == expected.dtype and sep.shape == expected.shape
    if threshold is None:
        torch.testing.assert_close(sep, expected, rtol=0, atol=2e-6)
    else:  # masks agree wherever the logit is not within rounding of the threshold
        decided = (logits - threshold).abs() > 1e-5
        assert torch.equal(sep[decided], expected[decided])
        assert (sep != expected).float().mean() < 1e-5


def test_separable_upscale_is_the_cpu_default(tiny_model):
    """On the CPU upscale_masks uses the sparse separable resampling (it never builds the
    (B*M, img_size, img_size) intermediate); the result matches the forced choice exactly."""
    low = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    default = upscale_masks(low, 256, (192, 256), (300, 400))
    forced = upscale_masks(low, 256, (192, 256), (300, 400), separable=True)
    assert torch.equal(default, forced)


def test_repeated_embedding_does_not_grow_memory(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (180, 240, 3), dtype=np.uint8) for _ in range(3)]
    predictor = SamPredictor(tiny_model, precision="fp32")
    kw = dict(point_coords=np.array([[100.0, 90.0]]), point_labels=np.array([1]))

    def run(n):
        for i in range(n):
            predictor.set_image(images[i % len(images)])
            predictor.predict(**kw)
        gc.collect()

    run(2)  # warm-up: allocator pools, lazily built tables
    before = _rss_bytes()
    if before == 0:
        pytest.skip("no /proc/self/statm on this platform")
    run(10)
    grown = _rss_bytes() - before
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10 images"


def test_training_path_matches_and_backpropagates(tiny_model, monkeypatch):
    """With autograd on, the encoder takes the buffer-free path: same values, gradients reach rel-pos tables."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(ie, "_BIAS_CHUNK_ELEMS", 3 * 16 * 256)  # chunked global attention
    with torch.inference_mode():
        expected = tiny_model.image_encoder(x)
    blocks = tiny_model.image_encoder.blocks
    try:
        with torch.enable_grad():
            out = tiny_model.image_encoder(x)
            out.square().mean().backward()
        torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-5)
        for blk in blocks:  # windowed and global blocks alike
            assert blk.attn.rel_pos_h.grad is not None and blk.attn.rel_pos_h.grad.abs().sum() > 0
    finally:
        tiny_model.zero_grad(set_to_none=True)


def test_reduced_precision_attention_in_head_and_row_blocks_matches_one_block(tiny_model, monkeypatch):
    """bf16 global attention split over heads and query rows (uneven last blocks) = one block."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    grid = tiny_model.image_encoder.img_size // tiny_model.image_encoder.patch_embed.proj.stride[0]
    heads = tiny_model.image_encoder.blocks[0].attn.num_heads
    assert heads == 6
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(ie, "_SMALL_GRID", 0)  # treat every grid as a global one
        monkeypatch.setattr(ie, "_EXPLICIT_CHUNK_ELEMS", 1 << 40)
        whole = tiny_model.image_encoder(x).float()
        # 4 of the 6 heads x 1 query row (a short last head block), then all heads x 3 rows
        # (a short last row block); one row of scores of one head is grid * grid * grid elements
        for budget in (4 * grid**3, heads * 3 * grid**3):
            monkeypatch.setattr(ie, "_EXPLICIT_CHUNK_ELEMS", budget)
            blocked = tiny_model.image_encoder(x).float()
            torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-2)
    assert whole.abs().max() > 0.1
