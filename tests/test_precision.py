"""Reduced precision and optional torch.compile of the image encoder (engine/models/device.py, SamPredictor).

Speed is measured in benchmarks/bench_engine.py, never here.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from napari_sam.engine.models import device as device_mod
from napari_sam.engine.prediction import predictor as predictor_mod
from napari_sam.engine.models.device import InferenceOptions, compile_requested, resolve_precision
from napari_sam.engine.prediction.predictor import SamPredictor
from napari_sam.errors import DeviceError
from napari_sam.model import build_sam

CPU = torch.device("cpu")


def _image(h: int = 200, w: int = 240) -> np.ndarray:
    from skimage.draw import disk

    rng = np.random.default_rng(5)
    img = rng.integers(0, 50, (h, w, 3), dtype=np.uint8)
    for _ in range(5):
        rr, cc = disk((rng.integers(30, h - 30), rng.integers(30, w - 30)), rng.integers(10, 30), shape=(h, w))
        img[rr, cc] = rng.integers(120, 255, 3)
    return img


# ---- resolving the precision ---------------------------------------------------------------------


@pytest.mark.parametrize("alias, expected", [("fp32", "fp32"), ("float32", "fp32"), ("FP32", "fp32")])
def test_fp32_aliases(alias, expected):
    assert resolve_precision(alias, CPU) == expected


def test_unknown_precision_names_the_choices():
    with pytest.raises(DeviceError, match="Unknown precision 'int4'.*fp32"):
        resolve_precision("int4", CPU)


def test_env_var_sets_precision(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(device_mod.PRECISION_ENV, "bf16")
    assert resolve_precision(None, CPU) == "bf16"
    monkeypatch.delenv(device_mod.PRECISION_ENV)
    assert resolve_precision(None, CPU) == device_mod.default_precision(CPU)


def test_fp16_on_cpu_falls_back_to_bf16_with_warning(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    with pytest.warns(UserWarning, match="falling back to bf16"):
        assert resolve_precision("fp16", CPU) == "bf16"


def test_bf16_on_cpu_without_native_bf16_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="falling back to fp32"):
        assert resolve_precision("bf16", CPU) == "fp32"
    with pytest.warns(UserWarning, match="falling back to fp32"):
        assert resolve_precision("fp16", CPU) == "fp32"


def test_bf16_on_capable_cpu_is_kept_silently(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) == "bf16"


def test_precision_is_the_predictors_not_the_models(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    model = build_sam("tiny")
    assert not hasattr(model, "precision")  # runtime options are not stored on the model
    assert SamPredictor(model, precision="bf16").precision == "bf16"
    assert SamPredictor(model).options == InferenceOptions.resolve("cpu")
    opts = InferenceOptions.resolve("cpu", "bf16")
    assert SamPredictor(model, options=opts).options is opts
    with pytest.raises(DeviceError, match="either options or precision"):
        SamPredictor(model, precision="fp32", options=opts)
    with pytest.raises(TypeError):
        build_sam("tiny", precision="bf16")


def test_one_validator_one_exception_type():
    for bad in (lambda: resolve_precision("fp8", CPU), lambda: InferenceOptions(CPU, "fp8"),
                lambda: InferenceOptions.resolve("cpu", "fp8"), lambda: SamPredictor(build_sam("tiny"), "fp8")):
        with pytest.raises(DeviceError, match="Unknown precision 'fp8'.*fp32"):
            bad()
    with pytest.raises(DeviceError, match="compile must be True or False"):
        InferenceOptions(CPU, "fp32", compile="yes")


# ---- running in bf16 -----------------------------------------------------------------------------


def test_bf16_encoder_runs_bf16_matmuls_and_stays_close(tiny_model, monkeypatch):
    """Autocast really reaches the encoder's linear layers, and the result stays near fp32."""
    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    seen = []
    hook = tiny_model.image_encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        image = _image()
        p32 = SamPredictor(tiny_model, precision="fp32")
        p32.set_image(image)
        p16 = SamPredictor(tiny_model, precision="bf16")
        p16.set_image(image)
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    e32, e16 = p32.get_embedding().features, p16.get_embedding().features
    assert e16.dtype == torch.float32 and e16.shape == e32.shape
    rel = float((e16 - e32).norm() / e32.norm())
    assert 0 < rel < 0.03  # different (bf16 did run) but close
    kw = dict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]))
    m32, _, _ = p32.predict(**kw)
    m16, _, _ = p16.predict(**kw)
    assert (m32 == m16).mean() >= 0.97


# ---- torch.compile opt-in ------------------------------------------------------------------------


def test_compile_requested_reads_argument_then_env(monkeypatch):
    monkeypatch.delenv(device_mod.COMPILE_ENV, raising=False)
    assert compile_requested(None) is False
    monkeypatch.setenv(device_mod.COMPILE_ENV, "1")
    assert compile_requested(None) is True
    assert compile_requested(False) is False
    monkeypatch.setenv(device_mod.COMPILE_ENV, "0")
    assert compile_requested(None) is False
    assert compile_requested(True) is True


def test_compile_failure_falls_back_to_eager_with_warning(tiny_model, monkeypatch):
    def broken(module):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(predictor_mod, "compile_module", broken)
    image = _image()
    eager = SamPredictor(tiny_model, precision="fp32", compile=False)
    eager.set_image(image)
    compiled = SamPredictor(tiny_model, precision="fp32", compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile of the image encoder failed.*falling back to eager"):
        compiled.set_image(image)
    assert compiled.compile is False  # does not retry on every image
    torch.testing.assert_close(compiled.get_embedding().features, eager.get_embedding().features, rtol=0, atol=0)


def test_compiled_module_is_used_when_compiling_works(tiny_model, monkeypatch):
    calls = []

    def fake_compile(module):
        def run(x):
            calls.append(tuple(x.shape))
            return module(x)

        return run

    monkeypatch.setattr(predictor_mod, "compile_module", fake_compile)
    p = SamPredictor(tiny_model, precision="fp32", compile=True)
    p.set_image(_image())
    p.set_image(_image(120, 90))
    assert calls == [(1, 3, 256, 256), (1, 3, 256, 256)]


def test_dynamo_not_imported_unless_compiling():
    code = (
        "import sys, numpy as np\n"
        "from napari_sam.model import build_sam\n"
        "from napari_sam.engine.prediction.predictor import SamPredictor\n"
        "p = SamPredictor(build_sam('tiny'), precision='fp32')\n"
        "p.set_image(np.zeros((64, 64, 3), np.uint8))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
