"""napari-sam: Segment Anything for microscopy, with its own PyTorch engine.

Importing this package is light: it pulls in neither Qt nor napari, and loads
torch only when a model-related name is first used. Public names:

- ``build_sam(model_type, checkpoint=None, device=None)``: a model in eval mode.
- ``load_model(name_or_path=None, device=None)``: zoo name or file (None: the default model).
- ``SamPredictor(model, precision=None)``: the reference's two-phase set_image / predict API.
- ``Segmenter(model=..., device=None, precision=None)``: napari-order (row, col) scripting API.
- ``SamAutomaticMaskGenerator(model, ..., options=None)``: automatic instance segmentation.
- ``InferenceOptions.resolve(device, precision, compile)``: how a model runs, handed to
  whatever runs it (the predictor owns one; ``Segmenter.options``).
- ``build_sam2(model_type, checkpoint=None)``: a SAM 2.1 model (``load_model`` also reads SAM 2.1 files).
- ``SAM2ImagePredictor(model)``: Meta's SAM 2 image API (``set_image`` / ``predict``).
- ``SAM2VideoPredictor(model)``: Meta's SAM 2 video API over lazily read frames.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_sam": "napari_sam.model.build",
    "sam_model_registry": "napari_sam.model.build",
    "SamPredictor": "napari_sam.engine.prediction.predictor",
    "load_model": "napari_sam.engine.models.zoo",
    "list_models": "napari_sam.engine.models.zoo",
    "Segmenter": "napari_sam.engine.prediction.segmenter",
    "SamAutomaticMaskGenerator": "napari_sam.engine.automatic.amg",
    "InferenceOptions": "napari_sam.engine.models.device",
    "build_sam2": "napari_sam.model.sam2.build",
    "SAM2ImagePredictor": "napari_sam.engine.sam2.image_predictor",
    "SAM2VideoPredictor": "napari_sam.engine.sam2.video_predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
