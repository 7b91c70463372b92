"""MobileSAM's TinyViT encoder (``vit_t``): checkpoint layout, shapes, and parity with the reference.

The parity tests need the ``mobile_sam`` package (PyPI: ``mobilesam-mirror``,
a plain mirror of MobileSAM's code) and are skipped without it. That code
imports a few helpers from ``timm`` at import time; when timm is absent a
minimal stand-in is put in ``sys.modules`` just for that import (the helpers
it names are only used for initialisation and for drop-path, which ``vit_t``
does not use).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types

import pytest
import torch
from torch import nn

from napari_sam.model import TinyViTConfig, build_sam, get_config
from napari_sam.model.tiny_vit import TinyViT, relative_offset_index

# Derived from MobileSAM's public modeling code (tiny_vit_sam.py, build_sam_vit_t).
ENCODER_KEY_COUNT = 302
ENCODER_PARAM_COUNT = 6_065_532
# sha256 of "\n".join(f"{key}:{shape}") over the sorted encoder state dict.
ENCODER_LAYOUT_SHA256 = "a0e43dd598090d02f89b52d29bd950642a5715a56bc68c20adf8132900e0c482"
SAMPLE_SHAPES = {
    "patch_embed.seq.0.c.weight": (32, 3, 3, 3),
    "patch_embed.seq.2.bn.running_var": (64,),
    "layers.0.blocks.0.conv1.bn.num_batches_tracked": (),
    "layers.0.blocks.1.conv2.c.weight": (256, 1, 3, 3),
    "layers.0.downsample.conv2.c.weight": (128, 1, 3, 3),
    "layers.1.blocks.0.attn.attention_biases": (4, 49),
    "layers.1.blocks.0.attn.qkv.weight": (384, 128),
    "layers.2.blocks.5.attn.attention_biases": (5, 196),
    "layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
    "layers.3.blocks.1.local_conv.c.weight": (320, 1, 3, 3),
    "layers.3.blocks.1.mlp.fc1.weight": (1280, 320),
    "norm_head.weight": (320,),
    "head.weight": (1000, 320),
    "neck.0.weight": (256, 320, 1, 1),
    "neck.2.weight": (256, 256, 3, 3),
    "neck.3.bias": (256,),
}


def _layout_digest(sd: dict[str, torch.Tensor]) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture(scope="module")
def vit_t() -> torch.nn.Module:
    return build_sam("vit_t")


def test_state_dict_layout_matches_mobile_sam(vit_t):
    enc = vit_t.image_encoder
    sd = enc.state_dict()
    assert len(sd) == ENCODER_KEY_COUNT
    assert sum(p.numel() for p in enc.parameters()) == ENCODER_PARAM_COUNT
    for key, shape in SAMPLE_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # Index buffers are rebuilt, not stored; the last stage has no merging.
    assert not any(k.endswith("attention_bias_idxs") for k in sd)
    assert not any(k.startswith("layers.3.downsample") for k in sd)
    assert _layout_digest(sd) == ENCODER_LAYOUT_SHA256
    # The whole model is addressed under image_encoder.* like the published file.
    assert "image_encoder.patch_embed.seq.0.c.weight" in vit_t.state_dict()
    assert enc.img_size == 1024


def test_relative_offset_index():
    idx = relative_offset_index(3)
    assert idx.shape == (9, 9)
    assert idx.dtype == torch.long
    assert torch.equal(idx, idx.T)
    assert torch.equal(idx.diagonal(), torch.zeros(9, dtype=torch.long))
    # Position (0, 0) against (row 2, col 1): offset (2, 1) -> 2 * 3 + 1.
    assert idx[0, 7] == 7
    # First row enumerates every offset once, in order.
    assert torch.equal(idx[0], torch.arange(9))


def test_forward_shape_small_input():
    torch.manual_seed(0)
    enc = TinyViT(TinyViTConfig(img_size=256)).eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = enc(x)
        single = enc(x[1:])
    assert out.shape == (2, 256, 16, 16)
    assert torch.isfinite(out).all()
    # Images in a batch do not see each other (eval-mode BN, per-window attention).
    torch.testing.assert_close(out[1:], single, atol=1e-5, rtol=1e-5)


def test_sam_vit_t_small_config_end_to_end():
    cfg = get_config("vit_t").with_encoder(img_size=256)
    torch.manual_seed(0)
    sam = build_sam(cfg)
    image = torch.rand(3, 200, 256) * 255
    out = sam(
        [
            {
                "image": image,
                "original_size": (200, 256),
                "point_coords": torch.tensor([[[100.0, 80.0]]]),
                "point_labels": torch.tensor([[1]]),
            }
        ],
        multimask_output=True,
    )[0]
    assert out["masks"].shape == (1, 3, 200, 256)
    assert out["low_res_logits"].shape == (1, 3, 64, 64)


def _stub_timm() -> list[str]:
    """Put a minimal stand-in for the timm names MobileSAM imports into sys.modules."""

    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    mods = {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}
    sys.modules.update(mods)
    return list(mods)


@pytest.fixture(scope="module")
def reference_build():
    """MobileSAM's own ``build_sam_vit_t``, or skip."""
    stubbed: list[str] = []
    try:
        importlib.import_module("timm.models.layers")
    except ImportError:
        stubbed = _stub_timm()
    try:
        build_sam_mod = pytest.importorskip("mobile_sam.build_sam")
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    return build_sam_mod.build_sam_vit_t


@pytest.fixture(scope="module")
def perturbed_pair(reference_build):
    """(reference MobileSAM, napari-sam vit_t) holding the same random weights, both in eval mode."""
    torch.manual_seed(0)
    ref = reference_build()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Many tensors start at zero or one (BN, biases, attention biases):
        # perturb them all so that every parameter and statistic matters.
        for name, t in ref.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("attention_biases"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim <= 1:
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.add_(0.02 * torch.randn(t.shape, generator=g))
    # The reference caches gathered attention biases when switched to eval:
    # do it after the weights are final.
    ref.eval()
    ours = build_sam("vit_t")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    return ref, ours


def test_bias_index_matches_reference(perturbed_pair):
    ref, ours = perturbed_pair
    ref_idx = {n: b for n, b in ref.image_encoder.named_buffers() if n.endswith("attention_bias_idxs")}
    our_idx = {n: b for n, b in ours.image_encoder.named_buffers() if n.endswith("attention_bias_idxs")}
    assert ref_idx.keys() == our_idx.keys() and len(ref_idx) == 10
    for n in ref_idx:
        assert torch.equal(ref_idx[n], our_idx[n]), n


@pytest.fixture(scope="module")
def embeddings(perturbed_pair):
    """Image embeddings (reference, ours) of one random 1024 px input, each (1, 256, 64, 64)."""
    ref, ours = perturbed_pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return ref.image_encoder(x), ours.image_encoder(x)


def test_encoder_parity_with_mobile_sam(embeddings):
    emb_ref, emb = embeddings
    assert emb.shape == emb_ref.shape == (1, 256, 64, 64)
    scale = max(emb_ref.abs().max().item(), 1.0)
    assert (emb - emb_ref).abs().max().item() <= 1e-4 * scale


def test_point_prompt_parity_with_mobile_sam(perturbed_pair, embeddings):
    """One positive point through each model's prompt encoder and mask decoder, on its own embedding."""
    ref, ours = perturbed_pair
    emb_ref, emb = embeddings
    coords = torch.tensor([[[412.0, 300.0]]])
    labels = torch.tensor([[1]])
    outputs = []
    with torch.no_grad():
        for model, image_embedding in ((ref, emb_ref), (ours, emb)):
            sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            outputs.append(
                model.mask_decoder(
                    image_embeddings=image_embedding,
                    image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            )
    (masks_ref, iou_ref), (masks, iou) = outputs
    assert masks.shape == masks_ref.shape == (1, 3, 256, 256)
    scale = max(masks_ref.abs().max().item(), 1.0)
    assert (masks - masks_ref).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(iou, iou_ref, atol=1e-4, rtol=1e-4)
