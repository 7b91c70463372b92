"""Keep napari alive once its OpenGL context exists: no triton, no ``torch.compile`` from here on.

triton ships its own LLVM; loading it into a process whose OpenGL driver (Mesa) already loaded the
system's LLVM crashes that process (a segmentation fault, napari gone with the user's unsaved
work). Importing ``torchvision``, ``torch._dynamo`` or ``torch.compile`` pulls triton in, and so does
``torch.optim`` (its optimizers import ``torch._dynamo`` on first use), so avoiding those imports
alone cannot cover fine-tuning. :func:`protect_process` therefore marks triton as unavailable in
this process when it is not loaded yet (``torch`` then treats it as not installed: its imports work
without it, and anything that insists on triton gets an ``ImportError`` instead of a crash), and
refuses ``torch.compile`` (see :func:`napari_sam.engine.models.device.block_compile`).

A process that imported triton before napari's viewer existed is safe already and left as it is.
"""

from __future__ import annotations

import sys

REASON = "napari's OpenGL context exists, and loading the compiler now can crash napari"


def protect_process() -> None:
    """Make loading triton impossible in this process if it is not loaded yet, and refuse compiling.

    Called by the widgets before any work of theirs runs (the viewer exists by then). Idempotent.
    """
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # 'import triton' now raises ImportError
    from ..engine.models.device import block_compile  # imports torch: only when work starts, not at widget open

    block_compile(REASON)
