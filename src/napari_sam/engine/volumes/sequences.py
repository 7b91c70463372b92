"""Which axis a tracking run goes through: time (a time-lapse) or z (a stack), from axes or metadata.

SAM 2 memory tracks the same way through time points and z-slices, so a (T, Y, X) movie and a
(Z, Y, X) stack are both a *sequence* of 2-D frames. What must be clear is that there is exactly
one such axis: axis letters come from the caller (``axes="tyx"``, CLI ``--axes TYX``), else the
file's metadata, else the shape (a 3-D array is frames first; a (T, H, W, 3|4) array is colour
frames). A channel axis is reduced first (:func:`~napari_sam.engine.images.channels.select_channels`).
Refused with a clear message: a 2-D image (nothing to track through), two candidate axes
(t and z: choose one), and a time axis named by the caller that the file's metadata says the data
does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import InvalidSequenceError


@dataclass(frozen=True)
class Sequence:
    """``frames``: (N, H, W) or (N, H, W, 3|4), lazy where the input is; ``axis``: ``"t"``, ``"z"``,
    or ``""`` when nothing names it; ``rgb``: whether the last axis is colour."""

    frames: Any
    axis: str
    rgb: bool


def select_sequence(image: Any, axes: str | None = None, channel: Any = None,
                    file_axes: str | None = None) -> Sequence:
    """The frames to track through; see the module docstring.

    Args:
        image: the array in file order.
        axes: the caller's axis letters (wins over ``file_axes``).
        channel: channel choice of a multichannel image.
        file_axes: axis letters from the file's metadata, if any.
    """
    from ..images.channels import select_channels
    from ..images.image_slices import guess_rgb

    shape = tuple(int(s) for s in image.shape)
    if axes is not None:
        axes = axes.lower()
        if len(axes) != len(shape):
            what = "a time axis" if "t" in axes else "the axes"
            raise InvalidSequenceError(
                f"axes={axes.upper()!r} names {len(axes)} axes but the data has {len(shape)} (shape {shape}): "
                f"it does not have {what} as given. Give one letter per axis, e.g. "
                f"{'TYX' if len(shape) == 3 else 'YX' if len(shape) == 2 else 'TCYX'}."
            )
        fa = (file_axes or "").lower()
        if "t" in axes and fa and "q" not in fa and len(fa) == len(shape) and "t" not in fa:
            raise InvalidSequenceError(
                f"axes={axes.upper()!r} names a time axis, but the file's metadata says its axes are {fa.upper()} "
                f"(no time axis). Give --axes {fa.upper()} / axes={fa!r} (tracking through z works the same way)."
            )
    elif file_axes and "q" not in file_axes.lower():
        axes = file_axes.lower()
    selected, rgb = select_channels(image, axes, channel)
    sel_shape = tuple(int(s) for s in selected.shape)
    if axes is not None and "q" not in axes:
        plane = "yxs" if rgb else "yx"
        lead = [a for a in axes if a not in "cyxs"]
        if not lead:
            raise InvalidSequenceError(
                f"The data (axes {axes.upper()}, shape {shape}) is one 2-D image: it has no time or z axis to "
                f"track through. Open a time-lapse (T, Y, X) or a z-stack (Z, Y, X)."
            )
        if len(lead) > 1:
            raise InvalidSequenceError(
                f"The data has axes {axes.upper()} (shape {shape}): {len(lead)} axes ({', '.join(lead).upper()}) "
                f"could be tracked through. Track one at a time: take one {lead[0].upper()} index (or one "
                f"{lead[1].upper()} index) first."
            )
        return Sequence(selected, lead[0] if lead[0] in "tz" else "", bool(rgb) and plane == "yxs")
    rgb = guess_rgb(sel_shape) if rgb is None else rgb
    nd = len(sel_shape) - (1 if rgb else 0)
    if nd == 2:
        raise InvalidSequenceError(
            f"The data of shape {shape} is one 2-D image: there is no time or z axis to track through."
        )
    if nd != 3:
        raise InvalidSequenceError(
            f"Cannot tell which axis of shape {shape} to track through; give the axes (axes='tzyx' ... / "
            f"--axes TZYX) and take a single index of all but one of the leading axes."
        )
    return Sequence(selected, "", bool(rgb))


__all__ = ["Sequence", "select_sequence"]
