"""Keeping glibc's allocator from handing PyTorch fresh pages for every tensor.

On Linux with glibc, every allocation above ``M_MMAP_THRESHOLD`` (dynamic,
at most 32 MB by default) is a new ``mmap`` that is unmapped again on free, and
freed heap memory beyond ``M_TRIM_THRESHOLD`` is returned to the kernel. A SAM
click allocates a few dozen 1-8 MB tensors, so each click paid for about 4,500
page faults (zero-filling fresh pages), which on this project's virtual machines
cost a quarter or more of the click (docs/performance.md).

:func:`tune_allocator` raises both thresholds once per process, so that freed
tensors are reused from the heap: PyTorch's own CPU performance guide reaches
the same effect by preloading jemalloc or tcmalloc. It is called when a
:class:`~napari_sam.engine.prediction.predictor.SamPredictor` is created on the CPU, never
at import. The cost is memory that stays mapped after a peak (at most
``TRIM_BYTES`` above what is in use). ``NAPARI_SAM_TUNE_MALLOC=0`` turns it off;
it does nothing outside glibc or when jemalloc/tcmalloc is preloaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading

ENV = "NAPARI_SAM_TUNE_MALLOC"
# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# Blocks up to this size come from the heap (and are reused) instead of fresh mmaps: a click's
# tensors are at most a few MB; the encoder's larger activations stay mmapped, so its peak memory
# is unchanged (a 64 MB threshold measured ~50-100 MB more peak RSS for vit_b through fragmentation).
MMAP_THRESHOLD_BYTES = 8 * 2**20
# Freed memory at the top of the heap kept for reuse before it is returned to the kernel.
TRIM_BYTES = 512 * 2**20
# Extra memory requested from the kernel each time the heap grows.
TOP_PAD_BYTES = 64 * 2**20

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, bool] = {}


def _other_allocator_preloaded() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def tune_allocator() -> bool:
    """Apply the thresholds above once per process; True if they are in effect.

    Returns False (and changes nothing) where ``NAPARI_SAM_TUNE_MALLOC`` is ``0``,
    the C library is not glibc, another allocator is preloaded, or mallopt fails.
    """
    with _lock:
        if "applied" in _state:
            return _state["applied"]
        applied = False
        if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            _log.debug("allocator tuning switched off by %s", ENV)
        elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _other_allocator_preloaded():
            _log.debug("allocator tuning skipped: not glibc malloc")
        else:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                applied = all(
                    libc.mallopt(param, value) == 1
                    for param, value in (
                        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                        (_M_TRIM_THRESHOLD, TRIM_BYTES),
                        (_M_TOP_PAD, TOP_PAD_BYTES),
                    )
                )
            except (OSError, AttributeError) as e:  # no libc handle, no mallopt
                _log.debug("allocator tuning failed: %s", e)
        _state["applied"] = applied
        return applied
