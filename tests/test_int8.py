"""precision="int8": the encoder's linear layers in dynamic int8 on the CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor
from napari_sam.engine.models.device import resolve_precision
from napari_sam.engine.models.int8 import Int8Linear, quantize_encoder
from napari_sam.errors import DeviceError


def test_int8_linear_is_close_to_fp32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    x = torch.randn(2, 50, 96)
    y = Int8Linear(lin)(x)
    ref = lin(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    rel = float((y - ref).norm() / ref.norm())
    assert 0 < rel < 0.03  # quantised (not the fp32 product), and close to it


def test_quantized_encoder_is_a_copy(tiny_model):
    q = quantize_encoder(tiny_model.image_encoder)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert any(isinstance(m, Int8Linear) for m in q.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in tiny_model.image_encoder.modules())  # untouched


def test_int8_masks_agree_with_fp32(tiny_model, cells_image):
    img, truth = cells_image
    p32 = SamPredictor(tiny_model, precision="fp32")
    p8 = SamPredictor(tiny_model, precision="int8")
    p32.set_image(img)
    p8.set_image(img)
    e32, e8 = p32.get_image_embedding(), p8.get_image_embedding()
    assert not torch.equal(e32, e8)  # the int8 path really ran
    assert float((e8 - e32).norm() / e32.norm()) < 0.1
    rows, cols = np.nonzero(truth)
    rng = np.random.default_rng(0)
    equal = total = 0
    for _ in range(8):
        j = rng.integers(len(rows))
        kw = dict(point_coords=np.array([[cols[j], rows[j]]], float), point_labels=np.array([1]))
        for multimask in (True, False):
            m32, _, _ = p32.predict(multimask_output=multimask, **kw)
            m8, _, _ = p8.predict(multimask_output=multimask, **kw)
            equal += int((m32 == m8).sum())
            total += m32.size
    assert equal / total >= 0.98


def test_int8_on_gpu_devices_is_refused():
    for dev in ("cuda", "mps"):
        with pytest.raises(DeviceError, match="CPUs only"):
            resolve_precision("int8", torch.device(dev))
    assert resolve_precision("int8", torch.device("cpu")) == "int8"


def test_int8_path_imports_no_dynamo_torchvision_or_triton(tiny_checkpoint):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from napari_sam import Segmenter
        seg = Segmenter({tiny_checkpoint!r}, device="cpu", precision="int8")
        seg.set_image(np.random.default_rng(0).integers(0, 4000, (120, 150)).astype(np.uint16))
        assert seg.segment(points=[(60, 70)]).shape == (120, 150)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "triton")
                     or m == "torch._dynamo" or m.startswith("torch._dynamo."))
        print("BAD", bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "BAD []" in out.stdout, out.stdout
