"""``precision="int8"``: the image encoder's linear layers in dynamic int8, for CPUs without bf16.

On an AVX2-only CPU (no AVX512-BF16, no AMX) there is no fast reduced float type, but
integer matrix products are fast. Each ``nn.Linear`` of a copy of the image encoder is
replaced by :class:`Int8Linear`: weights quantised once, per output channel, symmetric,
to int8 and prepacked for the CPU's quantised kernels (fbgemm / x86); activations are
quantised per call (per tensor, from their own range) and every product accumulates in
int32 before the result is rescaled to fp32. Attention products, normalisation,
convolutions and everything outside the encoder stay fp32; the model itself is untouched
(the fp32 weights stay the default's, exact).

The trade: masks move at their borders (the parity cases keep about 99 % of mask pixels
equal to fp32; see docs/performance.md). Chosen only when asked for (``precision="int8"``).
Only CPUs have these kernels; CUDA and MPS are refused with :class:`~napari_sam.errors.DeviceError`.

Only ``torch.ops.quantized`` (C++ operators shipped with every CPU build of torch) is used:
nothing here imports ``torch.ao``'s converters, ``torch._dynamo``, ``torchvision`` or triton,
which must not be imported after napari's OpenGL context exists.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ...errors import DeviceError


def int8_supported(device: torch.device) -> bool:
    """Whether ``device`` has int8 linear kernels (CPUs with fbgemm/x86 or onednn quantised engines)."""
    return device.type == "cpu" and any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def check_int8_device(device: torch.device) -> None:
    """Raise :class:`DeviceError` when ``precision="int8"`` cannot run on ``device``."""
    if not int8_supported(device):
        raise DeviceError(
            f"precision 'int8' runs on CPUs only (x86 quantised kernels); the model is on {device.type!r}. "
            "Use precision 'bf16' or 'fp16' on a GPU, or move the model to the CPU (device='cpu')."
        )


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` run as a dynamic int8 product (weights int8 per output channel).

    Input (..., in_features) float32; output (..., out_features) float32. ``bias`` is the
    fp32 bias (or None), as on ``nn.Linear``.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)  # read by callers that need the layer's output for a zero input
        _select_engine()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantised tensor creation is marked deprecated
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        # reduce_range: 7-bit activations, so the AVX2 u8 x s8 pair sums cannot saturate int16
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float().contiguous(), self._packed, True)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def _select_engine() -> None:
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"


def quantize_encoder(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` (eval mode, on the CPU) whose every ``nn.Linear`` is an :class:`Int8Linear`."""
    check_int8_device(next(encoder.parameters()).device)
    linears = {name for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    # copy everything but the linear layers' weights (they are replaced): no second fp32 copy of them
    memo = {}
    for name in linears:
        lin = encoder.get_submodule(name)
        memo[id(lin.weight)] = lin.weight
        if lin.bias is not None:
            memo[id(lin.bias)] = lin.bias
    out = copy.deepcopy(encoder, memo).eval()
    for name in linears:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, Int8Linear(getattr(parent, child)))
    return out


__all__ = ["Int8Linear", "check_int8_device", "int8_supported", "quantize_encoder"]
