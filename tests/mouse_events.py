"""Mouse events as napari's mouse callbacks receive them, for driving a layer's clicks without a real mouse.

Used by the click-ahead tests and by benchmarks/bench_click.py (benchmarks put tests/ on ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read from a vispy mouse event."""

    type: str
    position: tuple
    pos: np.ndarray
    modifiers: tuple = ()
    button: int = 1
    is_dragging: bool = False
    handled: bool = False
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    view_direction: tuple | None = None
    up_direction: tuple | None = None


def mouse_event(kind: str, rc, modifiers=()):
    """A ``kind`` (``"mouse_press"``/``"mouse_release"``) event at world (row, col) ``rc``, wrapped as napari
    wraps it for its callbacks (read-only but for ``handled``)."""
    from napari.utils._proxies import ReadOnlyWrapper

    ev = MouseEvent(kind, tuple(float(v) for v in rc), np.zeros(2), tuple(modifiers))
    return ReadOnlyWrapper(ev, exceptions=("handled",))
