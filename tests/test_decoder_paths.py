"""The decoder's fast paths give the same results as the plain ones (parity with the reference
itself is in test_parity_reference.py): cached positional encoding, row-blocked upscaling."""

from __future__ import annotations

import pytest
import torch

import napari_sam.model.kernels.mask_head as md


def test_dense_pe_is_cached_and_follows_the_buffer(tiny_checkpoint):
    from napari_sam.model import build_sam

    tiny_model = build_sam("tiny", checkpoint=tiny_checkpoint)  # its own copy: the buffer is changed below
    pe_enc = tiny_model.prompt_encoder
    first = pe_enc.get_dense_pe()
    assert pe_enc.get_dense_pe() is first  # computed once
    fresh = pe_enc.pe_layer(pe_enc.image_embedding_size).unsqueeze(0)
    assert torch.equal(first, fresh)

    sd = tiny_model.state_dict()
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    sd[key] = sd[key] * 1.5
    tiny_model.load_state_dict(sd)  # copies into the buffer in place
    changed = pe_enc.get_dense_pe()
    assert not torch.equal(changed, first)
    assert torch.equal(changed, pe_enc.pe_layer(pe_enc.image_embedding_size).unsqueeze(0))


def test_dense_pe_from_inference_mode_does_not_reach_autograd(tiny_model):
    with torch.inference_mode():
        assert tiny_model.prompt_encoder.get_dense_pe().is_inference()
    pe = tiny_model.prompt_encoder.get_dense_pe()
    assert not pe.is_inference()
    emb = torch.randn(1, 128, 32, 32, requires_grad=True)
    sparse, dense = tiny_model.prompt_encoder(points=(torch.tensor([[[40.0, 50.0]]]), torch.ones(1, 1, dtype=torch.int)),
                                              boxes=None, masks=None)
    low, iou = tiny_model.mask_decoder.predict_masks(emb, pe, sparse, dense)
    (low.mean() + iou.mean()).backward()  # would raise for an inference tensor saved for backward
    assert emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("n, shared", [(1, True), (3, True), (3, False)])
def test_row_blocked_upscaling_equals_one_block(tiny_model, monkeypatch, n, shared):
    """Blocks of one embedding row (and one prompt) give the logits of a single block, with and
    without autograd, for a shared (batch-1) image side and for one image side per prompt."""
    dec = tiny_model.mask_decoder
    g = torch.Generator().manual_seed(0)
    h = w = 32
    src = torch.randn(1 if shared else n, h * w, 128, generator=g)
    tokens = torch.randn(n, 6, 128, generator=g)
    monkeypatch.setattr(md, "_UPSCALE_CHUNK_BYTES", 1 << 40)
    with torch.no_grad():
        whole = dec.masks_from(src, tokens, (h, w))
    monkeypatch.setattr(md, "_UPSCALE_CHUNK_BYTES", 1)  # one row, one prompt per block
    with torch.no_grad():
        blocked = dec.masks_from(src, tokens, (h, w), slice(1, None))
    torch.testing.assert_close(blocked, whole[:, 1:], rtol=0, atol=1e-5)
    src_g = src.clone().requires_grad_(True)
    with_grad = dec.masks_from(src_g, tokens, (h, w))
    torch.testing.assert_close(with_grad.detach(), whole, rtol=0, atol=1e-5)
    with_grad.sum().backward()
    assert src_g.grad is not None and src_g.grad.shape == src.shape


def test_decoder_layout_of_the_embedding_is_made_once_per_tensor(tiny_model):
    import numpy as np

    from napari_sam.engine.prediction.predictor import Embedding, SamPredictor

    p = SamPredictor(tiny_model)
    feats = torch.randn(1, 128, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    p.set_embedding(Embedding(feats, (200, 240), (213, 256)))
    first_masks = p.predict(**kw)[0]
    first = p._features_for_decoder(p.get_embedding())
    assert first.is_contiguous(memory_format=torch.channels_last) and torch.equal(first, feats)
    p.set_embedding(Embedding(feats, (200, 240), (213, 256)))  # same tensor, new Embedding (as per click)
    assert p._features_for_decoder(p.get_embedding()) is first
    np.testing.assert_array_equal(p.predict(**kw)[0], first_masks)
    feats.mul_(-1)  # changed in place: the decoder must see the new values
    changed = p._features_for_decoder(p.get_embedding())
    assert changed is not first and torch.equal(changed, feats)
    other = feats.clone()
    p.set_embedding(Embedding(other, (200, 240), (213, 256)))
    assert p._features_for_decoder(p.get_embedding()) is not changed


def test_decoder_layout_of_an_encoded_image_is_reused(tiny_model):
    """set_image produces an inference tensor (no version counter): cached by identity."""
    import numpy as np

    from napari_sam.engine.prediction.predictor import SamPredictor

    p = SamPredictor(tiny_model)
    p.set_image(np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8))
    assert p.get_embedding().features.is_inference()
    first = p._features_for_decoder(p.get_embedding())
    assert p._features_for_decoder(p.get_embedding()) is first
    p.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))


# ---- reduced-precision decoder (SamPredictor(precision="bf16"): decoder_dtype) ----------------------


def _prompts(model):
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(1, 2, 2, generator=g) * model.image_encoder.img_size
    return (pts, torch.tensor([[1, 0]], dtype=torch.int))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch, shared, mask_prompt", [(1, True, False), (4, True, False), (3, False, False),
                                                       (2, True, True)])
def test_reduced_decoder_is_close_to_fp32_and_returns_fp32(tiny_model, batch, shared, mask_prompt, dtype):
    """compute_dtype=bf16/fp16 (fp16: what CUDA and MPS get) runs the image side in that dtype (the
    logits differ from fp32, so it is not ignored) yet stays close; outputs keep the fp32 dtype.
    Covers one prompt, a batch on a shared image side, one image side per prompt, and mask prompts
    (a per-prompt dense embedding)."""
    g = torch.Generator().manual_seed(1)
    pe_enc, dec = tiny_model.prompt_encoder, tiny_model.mask_decoder
    h, w = pe_enc.image_embedding_size
    emb = torch.randn(1 if shared else batch, 128, h, w, generator=g)
    pts, labels = _prompts(tiny_model)
    pts, labels = pts.expand(batch, -1, -1) + torch.arange(batch)[:, None, None], labels.expand(batch, -1)
    masks = torch.randn(batch, 1, 4 * h, 4 * w, generator=g) if mask_prompt else None
    with torch.inference_mode():
        sparse, dense = pe_enc(points=(pts, labels), boxes=None, masks=masks)
        pe = pe_enc.get_dense_pe()
        low32, iou32 = dec(emb, pe, sparse, dense, True)
        low16, iou16 = dec(emb, pe, sparse, dense, True, compute_dtype=dtype)
    assert low16.dtype == torch.float32 and iou16.dtype == torch.float32
    assert low16.shape == low32.shape == (batch, 3, 4 * h, 4 * w)
    err = float((low16 - low32).norm() / low32.norm())
    assert 0 < err < 0.02, err
    assert float((iou16 - iou32).abs().max()) < 0.02
    agree = float(((low16 > 0) == (low32 > 0)).float().mean())
    assert agree > 0.98, agree


def test_predictor_bf16_uses_the_reduced_decoder(tiny_model, monkeypatch):
    """precision='bf16' reaches the decoder (decoder_dtype) and its masks agree with fp32's."""
    import numpy as np

    from napari_sam.engine.models import device as device_mod
    from napari_sam.engine.prediction.predictor import SamPredictor

    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    p32, p16 = SamPredictor(tiny_model, precision="fp32"), SamPredictor(tiny_model, precision="bf16")
    assert p32.decoder_dtype is None and p16.decoder_dtype == torch.bfloat16
    rng = np.random.default_rng(0)
    p32.set_image(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8))
    p16.set_embedding(p32.get_embedding())  # same embedding: only the decoder differs
    seen = []
    hook = tiny_model.mask_decoder.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("compute_dtype")),
                                                        with_kwargs=True)
    try:
        kw = dict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
        m32, s32, l32 = p32.predict(**kw)
        m16, s16, l16 = p16.predict(**kw)
    finally:
        hook.remove()
    assert seen == [None, torch.bfloat16]
    assert l16.dtype == np.float32 and s16.dtype == np.float32
    assert not np.array_equal(l16, l32)
    assert (m16 == m32).mean() > 0.99


def test_dense_pe_is_cast_once_per_dtype_and_follows_the_buffer(tiny_checkpoint):
    from napari_sam.model import build_sam

    model = build_sam("tiny", checkpoint=tiny_checkpoint)  # its own copy: the buffer is changed below
    pe_enc = model.prompt_encoder
    pe32, pe16 = pe_enc.get_dense_pe(), pe_enc.get_dense_pe(torch.bfloat16)
    assert pe32.dtype == torch.float32 and pe16.dtype == torch.bfloat16
    assert pe_enc.get_dense_pe(torch.bfloat16) is pe16 and pe_enc.get_dense_pe(torch.float32) is pe32
    assert pe16.is_contiguous(memory_format=torch.channels_last)  # token layout without a copy
    assert torch.equal(pe16, pe32.to(torch.bfloat16))
    sd = model.state_dict()
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    sd[key] = sd[key] * 1.5
    model.load_state_dict(sd)
    changed = pe_enc.get_dense_pe(torch.bfloat16)
    assert not torch.equal(changed, pe16)
    assert torch.equal(changed, pe_enc.get_dense_pe().to(torch.bfloat16))


def test_reduced_precision_predictor_keeps_its_decoder_copy_of_the_embedding_in_bf16(tiny_model, monkeypatch):
    import numpy as np

    from napari_sam.engine.models import device as device_mod
    from napari_sam.engine.prediction.predictor import SamPredictor

    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    p = SamPredictor(tiny_model, precision="bf16")
    p.set_image(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    feats = p._features_for_decoder(p.get_embedding())
    assert feats.dtype == torch.bfloat16 and feats.is_contiguous(memory_format=torch.channels_last)
    assert p.get_embedding().features.dtype == torch.float32  # what callers and the cache see stays fp32
    assert p._features_for_decoder(p.get_embedding()) is feats


@pytest.mark.parametrize("bad", [torch.int8, "bf16", torch.bool])
def test_compute_dtype_must_be_a_float_dtype(tiny_model, bad):
    dec = tiny_model.mask_decoder
    emb = torch.zeros(1, 128, 32, 32)
    sparse = torch.zeros(1, 2, 128)
    dense = torch.zeros(1, 128, 32, 32)
    with pytest.raises(ValueError, match="compute_dtype must be a floating torch dtype"):
        dec(emb, tiny_model.prompt_encoder.get_dense_pe(), sparse, dense, True, compute_dtype=bad)
    with pytest.raises(ValueError, match="compute_dtype"):
        dec.masks_from(torch.zeros(1, 32 * 32, 128), torch.zeros(1, 6, 128), (32, 32), compute_dtype=bad)


# ---- the first block's image side, prepared once per image (SamPredictor._prepared_image) ----------


def _three_ways(predictor, call):
    """call(predictor) with the prepared image side, without it, and on the plain reference path."""
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.model.kernels import use_reference_paths

    prepared = call(predictor)
    original = SamPredictor._prepares
    SamPredictor._prepares = property(lambda self: False)
    try:
        unprepared = call(predictor)
    finally:
        SamPredictor._prepares = original
    with use_reference_paths():
        plain = call(predictor)
    return prepared, unprepared, plain


def _same_masks(a, b):
    import numpy as np

    (ma, ia, la), (mb, ib, lb) = ([x.numpy() if torch.is_tensor(x) else x for x in out] for out in (a, b))
    # the logits agree to float rounding (below); a mask pixel whose logit lies within that rounding
    # of 0 may flip (1 of 144000 seen on one thread), so masks agree on all but a few pixels
    assert ma.shape == mb.shape and (ma != mb).sum() <= max(1, ma.size // 20000), (ma != mb).sum()
    np.testing.assert_allclose(ia, ib, atol=1e-5, rtol=0)
    np.testing.assert_allclose(la, lb, atol=1e-5 * max(1.0, float(np.abs(lb).max())), rtol=0)


def test_prepared_image_side_gives_the_masks_of_the_plain_decoder(tiny_model):
    import numpy as np

    from napari_sam.engine.prediction.predictor import SamPredictor

    p = SamPredictor(tiny_model, precision="fp32")
    p.set_image(np.random.default_rng(2).integers(0, 255, (180, 240, 3), dtype=np.uint8))
    click = dict(point_coords=np.array([[100.0, 80.0], [30.0, 40.0]]), point_labels=np.array([1, 0]))
    for multimask in (True, False):
        prepared, unprepared, plain = _three_ways(p, lambda q: q.predict(**click, multimask_output=multimask))
        assert p._prepared is not None
        _same_masks(prepared, unprepared)
        _same_masks(prepared, plain)
    boxes = torch.tensor([[10.0, 10.0, 120.0, 90.0], [50.0, 60.0, 200.0, 170.0], [0.0, 0.0, 240.0, 180.0]])
    boxes = p.transform.apply_boxes_torch(boxes, (180, 240))
    prepared, unprepared, plain = _three_ways(p, lambda q: q.predict_torch(None, None, boxes=boxes))  # 3 prompts
    _same_masks(prepared, unprepared)
    _same_masks(prepared, plain)
    low = prepared[2][:1, :1].numpy()  # a mask input: nothing is shared, nothing prepared is used
    p._prepared = None
    masked = _three_ways(p, lambda q: q.predict(**click, mask_input=low[0]))
    assert p._prepared is None
    _same_masks(masked[0], masked[2])


def test_prepared_image_side_follows_the_embedding_and_the_weights(tiny_checkpoint):
    import numpy as np

    from napari_sam.engine.prediction.predictor import Embedding, SamPredictor
    from napari_sam.model import build_sam

    model = build_sam("tiny", checkpoint=tiny_checkpoint)  # its own copy: its weights are changed below
    p = SamPredictor(model, precision="fp32")
    feats = torch.randn(1, 128, 32, 32, generator=torch.Generator().manual_seed(4))
    click = dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    p.set_embedding(Embedding(feats, (200, 240), (213, 256)))
    p.predict(**click)
    first = p._prepared[1]
    p.set_embedding(Embedding(feats, (200, 240), (213, 256)))  # same tensor, new Embedding (as per click)
    p.predict(**click)
    assert p._prepared[1] is first
    p.set_embedding(Embedding(feats.clone(), (200, 240), (213, 256)))  # another tensor
    p.predict(**click)
    assert p._prepared[1] is not first
    second = p._prepared[1]
    with torch.no_grad():  # fine-tuning changes weights in place
        model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.5)
        model.prompt_encoder.no_mask_embed.weight.add_(0.1)
    got = p.predict(**click)
    assert p._prepared[1] is not second
    fresh = SamPredictor(model, precision="fp32")
    fresh.set_embedding(Embedding(feats.clone(), (200, 240), (213, 256)))
    with __import__("napari_sam.model.kernels", fromlist=["use_reference_paths"]).use_reference_paths():
        want = fresh.predict(**click)
    _same_masks(got, want)
