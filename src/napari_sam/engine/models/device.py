"""Choosing how a model runs: the compute device, the numeric precision and ``torch.compile``.

:class:`InferenceOptions` holds the three, checked once by :meth:`InferenceOptions.resolve`
(the one validator: :func:`resolve_device`, :func:`resolve_precision`, :func:`compile_requested`,
each raising :class:`~napari_sam.errors.DeviceError`). The predictor owns its options and everything
that runs the model (segmenter, automatic mask generator, batch, widgets, CLI) is handed them
explicitly; nothing is stored on the model.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import torch

from ...errors import DeviceError

DEVICE_ENV = "NAPARI_SAM_DEVICE"
PRECISION_ENV = "NAPARI_SAM_PRECISION"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
COMPILE_ENV = "NAPARI_SAM_COMPILE"

# Set by the napari widgets (see block_compile): compiling is then refused unless the compiler was
# imported before the viewer existed.
_compile_blocked: str | None = None


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


def block_compile(reason: str) -> None:
    """Refuse :func:`compile_module` from now on in this process, unless ``torch._dynamo`` is already imported.

    napari's widgets call this: importing the compiler after napari created its OpenGL context can kill
    the process (triton's LLVM against the GL driver's), while an import made before the viewer is safe.
    """
    global _compile_blocked
    _compile_blocked = reason


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)`` with static shapes; compilation itself happens on the first call.

    ``torch._dynamo`` is imported here, lazily, so nothing imports it unless compiling was asked for.
    Raises :class:`DeviceError` after :func:`block_compile` when the compiler is not imported yet.
    """
    if _compile_blocked is not None and "torch._dynamo" not in sys.modules:
        raise DeviceError(
            f"torch.compile is off here: {_compile_blocked}. To compile inside napari, start it with the "
            'compiler imported first: python -c "import torch._dynamo, napari; napari.run()"'
        )
    import torch._dynamo  # noqa: F401

    return torch.compile(module, dynamic=False)


@dataclass(frozen=True)
class InferenceOptions:
    """How a model runs: ``device``, ``precision`` (``"fp32"``, ``"bf16"`` or ``"fp16"``) and ``compile``.

    Build it with :meth:`resolve` (defaults, environment variables and hardware fallbacks);
    direct construction checks the values but applies no fallback.
    """

    device: torch.device
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, torch.device):
            object.__setattr__(self, "device", resolve_device(self.device))
        object.__setattr__(self, "precision", _canonical_precision(self.precision))
        if not isinstance(self.compile, bool):
            raise DeviceError(f"compile must be True or False, got {self.compile!r}.")

    @classmethod
    def resolve(
        cls,
        device: str | torch.device | None = None,
        precision: str | None = None,
        compile: bool | None = None,
    ) -> InferenceOptions:
        """Options from user choices; ``None`` means the default (see :func:`resolve_device`,
        :func:`resolve_precision`, :func:`compile_requested`). Raises :class:`DeviceError`."""
        dev = resolve_device(device)
        return cls(dev, resolve_precision(precision, dev), compile_requested(compile))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The reduced dtype (``None`` for fp32)."""
        return autocast_dtype(self.precision)
