"""napari-aware, Qt-free glue between napari layers and the engine.

- :mod:`.layer_data`: image layers as arrays, world/data coordinates, the displayed slice.
- :mod:`.prompt_layers`: the Points (clicks) and Shapes (boxes) prompt layers.
- :mod:`.labels_io`: preview and target Labels layers, commits as diffs, undo/redo.
- :mod:`.mask_prompt`: a committed mask as a low-res logit mask prompt.
- :mod:`.controller`: :class:`SamController`, the click-to-segment state of one viewer.
  Its parts: :mod:`.prompt_input` (prompt layers, clicks, boxes, click-ahead), :mod:`.preview`
  (the preview and its candidates), :mod:`.channel_layers` (the layers the encoder sees).
- :mod:`.registry`: :func:`get_controller` (one controller per viewer, weakly keyed).
"""

from __future__ import annotations

from .registry import forget_controller, get_controller

__all__ = ["get_controller", "forget_controller"]
