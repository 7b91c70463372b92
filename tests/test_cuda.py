"""CUDA checks (skipped without an NVIDIA GPU; scripts/device_check.sh runs them on one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (an NVIDIA GPU)")]


@pytest.fixture(scope="module")
def image():
    from napari_sam.samples import synthetic_cells

    return synthetic_cells((200, 240), n_cells=6)


def _predictor(model, device, precision):
    from napari_sam.engine.prediction.predictor import SamPredictor

    return SamPredictor(model.to(device), precision=precision)


PROMPTS = [dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1])),
           dict(box=np.array([20.0, 20.0, 120.0, 110.0])),
           dict(point_coords=np.array([[60.0, 50.0], [150.0, 140.0]]), point_labels=np.array([1, 0]))]


def test_cuda_fp32_matches_cpu(tiny_model, image):
    import copy

    img, _ = image
    cpu = _predictor(copy.deepcopy(tiny_model), "cpu", "fp32")
    gpu = _predictor(copy.deepcopy(tiny_model), "cuda", "fp32")
    assert gpu.device.type == "cuda"
    cpu.set_image(img)
    gpu.set_image(img)
    e_cpu, e_gpu = cpu.get_embedding().features.cpu(), gpu.get_embedding().features.cpu()
    assert torch.allclose(e_cpu, e_gpu, atol=2e-3 * float(e_cpu.abs().max()))  # TF32 may be on
    for kw in PROMPTS:
        m_cpu, s_cpu, _ = cpu.predict(**kw)
        m_gpu, s_gpu, _ = gpu.predict(**kw)
        assert m_cpu.shape == m_gpu.shape
        assert (m_cpu == m_gpu).mean() > 0.995
        np.testing.assert_allclose(s_cpu, s_gpu, atol=1e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_reduced_precision_decoder_agrees_with_fp32(tiny_model, image, precision):
    import copy

    img, _ = image
    ref = _predictor(copy.deepcopy(tiny_model), "cuda", "fp32")
    low = _predictor(copy.deepcopy(tiny_model), "cuda", precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert low.precision == precision and low.decoder_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ref.set_image(img)
    low.set_embedding(ref.get_embedding())  # the same embedding: the decoder alone in reduced precision
    for kw in PROMPTS:
        m_ref, s_ref, logits_ref = ref.predict(**kw)
        m_low, s_low, logits_low = low.predict(**kw)
        assert logits_low.dtype == np.float32 or str(logits_low.dtype) == "float32"
        assert np.isfinite(s_low).all() and np.isfinite(logits_low).all()
        assert (m_ref == m_low).mean() > 0.99
