"""Axis meaning and channel choice: what an array's axes are, and which channel the encoder sees.

SAM sees one 2D grayscale or RGB image per slice. Multichannel microscopy
(a channel axis ``c``) is reduced to one channel, or to a composite (the mean
of several channels), before slicing. Axis meaning comes from, in order:

1. ``axes`` given by the caller (``axes="cyx"``; CLI ``--axes CYX``);
2. the file's metadata (OME axes, tifffile series axes; see :mod:`.io`);
3. the shape, only where it is not ambiguous: (..., H, W) is slices of 2D
   images, (..., H, W, 3|4) with ``rgb`` is colour.

A shape whose meaning is ambiguous is refused, naming the argument that
resolves it: a trailing axis of length 2 ((H, W, 2): two channels, not H slices
of W x 2 pixels); a leading axis of length 2-4 with nothing saying what it is
((3, H, W): three channels or three z-slices?); a channel axis with several
channels and no ``channel`` choice. A trailing axis of length 1 is a single
channel and is dropped. A leading axis of length 5 or more, or any in front of RGB(A)
colour samples, is read as slices.

tifffile's placeholder axes (``q`` unknown, ``i`` a generic image sequence)
carry no meaning: such axes count as not given. napari layers are not checked
here: their axes are what the user sees (the adapters pass them as ``axes``).

Axis letters: ``t`` time, ``c`` channel, ``z`` depth, ``y``/``x`` the plane,
``s`` colour samples (RGB), others (``t``...) are slice axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InvalidImageError

ChannelChoice = int | Sequence[int] | str | None

#: Longest leading axis that is refused as ambiguous when nothing names it (channels or slices?).
MAX_AMBIGUOUS_AXIS = 4
#: tifffile's axis letters that say nothing about an axis: unknown and generic image sequence.
_PLACEHOLDER_AXES = "qi"


def _refuse_short_leading_axes(shape: tuple[int, ...]) -> None:
    """Refuse a shape whose leading (slice) axes include one of length 2-4: channels or slices?"""
    guessed_rgb = len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4
    trailing_channels = len(shape) >= 3 and shape[-1] <= 2 and shape[-2] > 4
    if guessed_rgb:  # colour images: a channel axis beside RGB samples is implausible, the leading axes are slices
        return
    lead = shape[:-3] if trailing_channels else shape[:-2]
    short = [i for i, n in enumerate(lead) if 2 <= n <= MAX_AMBIGUOUS_AXIS]
    if not short:
        return
    i = short[0]
    lead_letters = "z" if len(lead) == 1 else "tz" if len(lead) == 2 else "z" * len(lead)
    plane = shape[len(lead):]
    tail = "yx" if len(plane) == 2 else "yxc"
    as_slices = lead_letters + tail
    as_channels = lead_letters[:i] + "c" + lead_letters[i + 1:] + tail
    raise InvalidImageError(
        f"Image of shape {shape}: axis {i} has length {lead[i]}, which may be channels or slices (z or time), and "
        f"nothing says which (no axis metadata). If they are slices, give axes='{as_slices}' "
        f"(CLI: --axes {as_slices.upper()}); if they are channels, give axes='{as_channels}' with channel=K or "
        f"channel='mean' (CLI: --axes {as_channels.upper()} --channel K)."
    )


def _check_axes(axes: str, shape: tuple[int, ...]) -> str:
    axes = axes.lower()
    if len(axes) != len(shape) or any(axes.count(a) > 1 for a in "csyx"):
        raise InvalidImageError(
            f"axes={axes!r} does not fit an image of shape {shape}: give one distinct letter per axis "
            f"(e.g. {'zyx' if len(shape) == 3 else 'czyx' if len(shape) == 4 else 'yx'})."
        )
    if not axes.endswith("yx") and not axes.endswith("yxs") and not axes.endswith("yxc"):
        raise InvalidImageError(f"axes={axes!r}: the plane axes 'y' and 'x' must come last (or before 'c'/'s').")
    return axes


def _channels_of(n: int, channel: ChannelChoice, where: str) -> list[int] | None:
    """Channel indices to use (None: all, for the mean composite)."""
    if isinstance(channel, str):
        if channel.lower() not in ("mean", "all"):
            raise InvalidImageError(f"channel={channel!r}: give a channel index, a list of indices, or 'mean'.")
        return None
    picks = [int(channel)] if np.isscalar(channel) else [int(c) for c in channel]
    if not picks or any(not 0 <= c < n for c in picks):
        raise InvalidImageError(f"channel={channel!r} is out of range: the image has {n} channels ({where}).")
    return picks


def select_channels(image: Any, axes: str | None = None, channel: ChannelChoice = None) -> tuple[Any, bool | None]:
    """The array the engine slices, and whether its last axis is RGB (None: unknown, guess later).

    Args:
        image: numpy, dask or zarr array, file order.
        axes: one letter per axis (see the module docstring), or None (decide from the shape).
        channel: for an image with a channel axis: an index, a list of indices (their mean), or
            ``"mean"`` (all channels); required when there are several channels.

    Returns:
        ``(array, rgb)``: (..., H, W) or (..., H, W, 3|4); lazy inputs stay lazy (dask).
        A composite is float32.

    Raises:
        InvalidImageError: ambiguous shapes, axes that do not fit, channels out of range.
    """
    shape = tuple(int(s) for s in image.shape)
    if axes is not None and any(a in _PLACEHOLDER_AXES for a in axes.lower()):  # no meaning: use the shape
        axes = None
    if axes is None:
        _refuse_short_leading_axes(shape)
        if len(shape) >= 3 and shape[-1] <= 2 and shape[-2] > 4:
            if shape[-1] == 1:
                axes = "i" * (len(shape) - 3) + "yxc"
            elif channel is None:
                raise InvalidImageError(
                    f"Image of shape {shape} ends in an axis of length {shape[-1]}: channels, not a plane of "
                    f"{shape[-2]} x {shape[-1]} pixels. Choose a channel with channel=0 (CLI: --channel 0), a "
                    "composite with channel='mean', or give the axes (axes='zyx' / --axes ZYX) if they really "
                    "are slices."
                )
            else:
                axes = "i" * (len(shape) - 3) + "yxc"
        elif channel is not None:
            raise InvalidImageError(
                f"channel={channel!r} was given but the image of shape {shape} has no known channel axis; "
                f"give its axes too (e.g. axes='cyx', CLI --axes CYX)."
            )
        else:
            return image, None
    axes = _check_axes(axes, shape)
    rgb: bool | None = False
    if "s" in axes:
        if axes[-1] != "s" or shape[-1] not in (3, 4):
            if "c" in axes:
                raise InvalidImageError(f"axes={axes!r}: both 's' (colour samples) and 'c' channels; choose one.")
            axes = axes.replace("s", "c")  # samples that are not RGB(A): channels
        else:
            rgb = True
    if "c" not in axes:
        if channel is not None:
            raise InvalidImageError(f"channel={channel!r} was given but the axes {axes!r} have no channel axis 'c'.")
        return image, rgb
    ci = axes.index("c")
    n = shape[ci]
    if n > 1 and channel is None:
        raise InvalidImageError(
            f"The image has {n} channels (axes {axes.upper()}, shape {shape}); SAM sees one channel at a time. "
            f"Choose one with channel=0 .. {n - 1} (CLI: --channel K), or a composite with channel='mean' "
            "(or a list of channels to average). If they are z-slices or time points, not channels, give the "
            f"axes instead (axes='{axes.replace('c', 'z')}', CLI --axes {axes.replace('c', 'z').upper()})."
        )
    picks = [0] if n == 1 else _channels_of(n, channel, f"axes {axes.upper()}")
    lazy = not isinstance(image, np.ndarray)
    if lazy:
        import dask.array as da

        arr = image if isinstance(image, da.Array) else da.from_array(image, chunks=getattr(image, "chunks", "auto"))
    else:
        arr = image
    index = [slice(None)] * len(shape)
    if picks is not None and len(picks) == 1:
        index[ci] = picks[0]
        return arr[tuple(index)], rgb
    if picks is not None:
        index[ci] = picks
        arr = arr[tuple(index)]
    return arr.astype(np.float32).mean(axis=ci, dtype=np.float32), rgb


__all__ = ["MAX_AMBIGUOUS_AXIS", "ChannelChoice", "select_channels"]
