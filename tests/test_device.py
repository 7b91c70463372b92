"""Device and precision selection."""

from __future__ import annotations

import pytest
import torch

from napari_sam.engine.models.device import available_devices, resolve_device, resolve_precision
from napari_sam.errors import DeviceError


def test_default_is_best_available(monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_DEVICE", raising=False)
    assert resolve_device(None).type == available_devices()[0]


def test_environment_override(monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_unavailable_or_unknown_device():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu-9000")


def test_precision_fallbacks(monkeypatch):
    import napari_sam.engine.models.device as device

    monkeypatch.setattr(device, "_cpu_has_fast_bf16", lambda: True)
    cpu = torch.device("cpu")
    monkeypatch.delenv("NAPARI_SAM_PRECISION", raising=False)
    assert resolve_precision(None, cpu) == "fp32"
    assert resolve_precision("bfloat16", cpu) == "bf16"
    with pytest.warns(UserWarning, match="falling back to bf16"):
        assert resolve_precision("fp16", cpu) == "bf16"
    monkeypatch.setenv("NAPARI_SAM_PRECISION", "bf16")
    assert resolve_precision(None, cpu) == "bf16"
    with pytest.raises(DeviceError, match="Unknown precision"):
        resolve_precision("int3", cpu)


def test_bf16_falls_back_to_fp32_without_native_support(monkeypatch):
    import napari_sam.engine.models.device as device

    monkeypatch.setattr(device, "_cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="fp32"):
        assert resolve_precision("bf16", torch.device("cpu")) == "fp32"
