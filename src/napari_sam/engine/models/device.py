"""Choosing the compute device and the numeric precision of the encoder."""

from __future__ import annotations

import os
import warnings

import torch

from ...errors import DeviceError

DEVICE_ENV = "NAPARI_SAM_DEVICE"
PRECISION_ENV = "NAPARI_SAM_PRECISION"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
COMPILE_ENV = "NAPARI_SAM_COMPILE"


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
    """Precision used when none is asked for: ``"fp32"`` on every device.

    Measured on a 2-core AVX-512/AMX CPU (docs/performance.md): bf16 makes the
    vit_b encoder about 1.5-2x faster but moves a small fraction of mask pixels
    (about 0.2-1 % of a mask's area), so exact parity with the reference stays
    the default; reduced precision is opt-in by argument or ``NAPARI_SAM_PRECISION``.
    """
    return "fp32"


def _canonical_precision(precision: str) -> str:
    precision = str(precision).lower()
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    precision = aliases.get(precision, precision)
    if precision not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}; use one of {PRECISIONS}.")
    return precision


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Validate ``precision`` for ``device``, falling back with a warning where unsupported.

    ``None`` reads ``NAPARI_SAM_PRECISION``, else :func:`default_precision`.
    Fallbacks (each warns, naming the precision used instead): fp16 on CPU ->
    bf16 (fp32 where the CPU has no native bf16); bf16 on a CPU without
    AVX512-BF16/AMX -> fp32 (it would be emulated, slower than fp32); bf16 on a GPU
    without bf16 -> fp16; bf16 on MPS -> fp16.
    ``"int8"`` (the encoder's linear layers in dynamic int8, :mod:`.int8`) runs on CPUs only:
    on CUDA or MPS it raises :class:`~napari_sam.errors.DeviceError`.
    Returns one of ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``.
    """
    if precision is None:
        precision = os.environ.get(PRECISION_ENV) or default_precision(device)
    precision = _canonical_precision(precision)
    if precision == "int8":  # never a silent fallback: int8 is asked for explicitly, for speed
        from .int8 import check_int8_device

        check_int8_device(device)
        return precision
    if device.type == "cpu" and precision in ("fp16", "bf16"):
        fast_bf16 = _cpu_has_fast_bf16()
        target = "bf16" if fast_bf16 else "fp32"
        if precision != target:
            why = (
                "fp16 autocast is not supported well on CPU"
                if precision == "fp16"
                else "this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 would be emulated and slower"
            )
            warnings.warn(f"{why}; falling back to {target}.", UserWarning, stacklevel=2)
            precision = target
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("This GPU has no bf16 support; falling back to fp16.", UserWarning, stacklevel=2)
        precision = "fp16"
    if precision == "bf16" and device.type == "mps":
        warnings.warn("bf16 autocast is not reliable on MPS; falling back to fp16.", UserWarning, stacklevel=2)
        precision = "fp16"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``None`` for fp32, and for int8, whose non-linear parts are fp32)."""
    return {"fp32": None, "int8": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def compile_requested(flag: bool | None) -> bool:
    """Whether to ``torch.compile`` the encoder: ``flag``, or ``NAPARI_SAM_COMPILE=1`` when ``None``."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)`` with static shapes; compilation itself happens on the first call.

    ``torch._dynamo`` is imported here, lazily: importing it after a napari
    OpenGL context exists can crash (see docs/environment notes), so nothing
    imports it unless compiling was asked for.
    """
    import torch._dynamo  # noqa: F401

    return torch.compile(module, dynamic=False)
