"""One :class:`SamController` per viewer, kept in a ``WeakKeyDictionary`` (no global viewer state).

A closed viewer is collected and its controller with it.
"""

from __future__ import annotations

import weakref
from typing import Any

_CONTROLLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_controller(viewer: Any = None, create: bool = True):
    """The napari-sam controller of ``viewer`` (default: ``napari.current_viewer()``), created on first use.

    Returns None when ``create`` is False and the viewer has none yet.
    """
    if viewer is None:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            from ..errors import NapariSamError

            raise NapariSamError("No napari viewer is open; pass the viewer: get_controller(viewer).")
    from .layer_data import unwrap

    viewer = unwrap(viewer)
    ctl = _CONTROLLERS.get(viewer)
    if ctl is None and create:
        from .controller import SamController

        ctl = SamController(viewer)
        _CONTROLLERS[viewer] = ctl
    return ctl


def forget_controller(viewer: Any) -> None:
    """Drop (and disconnect) the controller of ``viewer``, if any."""
    from .layer_data import unwrap

    ctl = _CONTROLLERS.pop(unwrap(viewer), None)
    if ctl is not None:
        ctl.close()
