"""Fast kernels of the SAM 1 model, and the one switch between them and the plain formulation.

The model's modules (``image_encoder.py``, ``transformer.py``, ``mask_decoder.py``) are written
as Segment Anything's plain computation: that code is the readable definition. A method that
has a faster equivalent is marked with :func:`fast_path`, naming its kernel from this package:

- ``encoder_attention``: the image encoder's attention, the relative-position bias built in blocks
  of query rows, explicit matmuls in bf16/fp16, windows projected before partitioning;
- ``decoder_attention``: the two-way transformer's attention with the linear maps folded onto
  the few prompt tokens and a batch-1 image side shared by every prompt;
- ``mask_head``: the decoder's upscaling and hypernetwork product as per-pixel matrix products;
- ``mask_upscaling``: low-resolution logits to the original image size with sparse separable
  resampling, only around the positive logits when a threshold of 0 is asked for.

Every kernel computes what the plain code computes, up to float rounding
(``tests/test_reference_paths.py``). By default the kernels run; :func:`use_reference_paths`
runs the plain code instead, for every module, in the whole process, while it is active.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_reference = False  # process-wide: True while use_reference_paths() is active


def fast_paths_enabled() -> bool:
    """Whether the fast kernels run (the default) rather than the plain formulation."""
    return not _reference


@contextmanager
def use_reference_paths(enabled: bool = True) -> Iterator[None]:
    """Run the plain formulation instead of the fast kernels while the ``with`` block lasts.

    The switch is process-wide (it affects calls from every thread) and restores the previous
    setting on exit, so blocks nest. The plain code is slow: it is for reading, testing and
    checking a result, not for interactive use.
    """
    global _reference
    previous, _reference = _reference, bool(enabled)
    try:
        yield
    finally:
        _reference = previous


def fast_path(kernel: Callable, applies: Callable[..., bool] | None = None) -> Callable[[F], F]:
    """Mark a plain method or function as computed by ``kernel`` when fast paths are enabled.

    ``kernel`` takes the same arguments as the decorated code (``self`` first for a method).
    ``applies`` (same arguments) may restrict the kernel to the calls it serves; the plain code
    runs otherwise. The plain code stays reachable as ``<decorated>.plain``, the kernel as
    ``<decorated>.kernel``.
    """

    def decorate(plain: F) -> F:
        @functools.wraps(plain)
        def dispatch(*args, **kwargs):
            if not _reference and (applies is None or applies(*args, **kwargs)):
                return kernel(*args, **kwargs)
            return plain(*args, **kwargs)

        dispatch.plain = plain  # type: ignore[attr-defined]
        dispatch.kernel = kernel  # type: ignore[attr-defined]
        return dispatch  # type: ignore[return-value]

    return decorate


__all__ = ["fast_path", "fast_paths_enabled", "use_reference_paths"]
