"""Keybindings of napari-sam, bound on napari-sam's own layers (``layer.bind_key``), never globally.

=================  =========================================
Key                Action
=================  =========================================
Enter              accept the previewed object
Escape             clear the prompts (and any edit)
C                  next candidate mask
N                  toggle negative clicks
Control-Z          undo the last accepted object
Control-Shift-Z    redo
=================  =========================================
"""

from __future__ import annotations

from typing import Any

from ..errors import NapariSamError

KEYS = {
    "Enter": "accept",
    "Escape": "clear",
    "C": "next_candidate",
    "N": "toggle_negative",
    "Control-Z": "undo",
    "Control-Shift-Z": "redo",
}


def run_action(controller: Any, action: str) -> None:
    """Run one named action; errors become a status message (never an exception in a key handler)."""
    try:
        if action == "toggle_negative":
            controller.negative_mode = not controller.negative_mode
            controller.events.status(
                message="negative clicks" if controller.negative_mode else "positive clicks", level="info"
            )
        else:
            getattr(controller, action)()
    except NapariSamError as e:
        controller.events.status(message=str(e), level="warning")


def bind_controller_keys(layer: Any, controller: Any) -> None:
    """Bind :data:`KEYS` on ``layer`` (an instance binding; other layers keep their keys)."""
    import weakref

    ref = weakref.ref(controller)
    for key, action in KEYS.items():

        def handler(_layer, action=action):
            ctl = ref()
            if ctl is not None:
                run_action(ctl, action)

        layer.bind_key(key, handler, overwrite=True)
