"""Choosing the compute device and the numeric precision of the encoder."""

from __future__ import annotations

import os
import warnings

import torch

from ..errors import DeviceError

DEVICE_ENV = "NAPARI_SAM_DEVICE"
PRECISION_ENV = "NAPARI_SAM_PRECISION"
PRECISIONS = ("fp32", "bf16", "fp16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (always ends with ``"cpu"``)."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to use.

    ``None`` means: the ``NAPARI_SAM_DEVICE`` environment variable if set,
    else CUDA, then Apple MPS, then CPU. An explicit but unavailable device
    raises :class:`DeviceError`.
    """
    if device is None:
        device = os.environ.get(DEVICE_ENV) or available_devices()[0]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"Unknown device {device!r}; use one of {available_devices()}.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"Device {device!r} requested but CUDA is not available here; use one of {available_devices()}.")
    if dev.type == "mps" and not _mps_available():
        raise DeviceError(f"Device {device!r} requested but Apple MPS is not available here; use one of {available_devices()}.")
    return dev


def _cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return False
    if "AVX512" not in cap.upper():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_precision(device: torch.device) -> str:
    """Precision used when none is asked for: fp32 everywhere (exact parity with the reference).

    Reduced precision is opt-in by argument or ``NAPARI_SAM_PRECISION``.
    """
    return "fp32"


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Validate ``precision`` for ``device``, falling back with a warning where unsupported.

    Returns one of ``"fp32"``, ``"bf16"``, ``"fp16"``.
    """
    if precision is None:
        precision = os.environ.get(PRECISION_ENV) or default_precision(device)
    precision = str(precision).lower()
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    precision = aliases.get(precision, precision)
    if precision not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}; use one of {PRECISIONS}.")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn("fp16 is not supported for the encoder on CPU; falling back to bf16.", stacklevel=2)
        precision = "bf16"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("This GPU has no bf16 support; falling back to fp16.", stacklevel=2)
        precision = "fp16"
    if precision == "bf16" and device.type == "mps":
        warnings.warn("bf16 autocast is not reliable on MPS; falling back to fp16.", stacklevel=2)
        precision = "fp16"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``None`` for fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
