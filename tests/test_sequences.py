"""Which axis a tracking run goes through: axes argument, file metadata, shape; clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.volumes.sequences import select_sequence
from napari_sam.errors import InvalidImageError, InvalidSequenceError


def test_time_axis_from_the_argument_or_the_metadata():
    movie = np.zeros((5, 20, 30), np.uint16)
    assert select_sequence(movie, axes="tyx").axis == "t"
    assert select_sequence(movie, file_axes="zyx").axis == "z"
    assert select_sequence(movie).axis == ""  # a 3-D array: frames first, named by nobody
    two_channel = np.zeros((5, 2, 20, 30), np.uint16)
    seq = select_sequence(two_channel, axes="tcyx", channel=1)
    assert seq.axis == "t" and seq.frames.shape == (5, 20, 30)
    colour = np.zeros((4, 20, 30, 3), np.uint8)
    seq = select_sequence(colour)
    assert seq.rgb and seq.frames.shape == colour.shape


@pytest.mark.parametrize("shape, kwargs, message", [
    ((20, 30), {"axes": "tyx"}, "does not have a time axis"),
    ((5, 20, 30), {"axes": "tyx", "file_axes": "zyx"}, "no time axis"),
    ((20, 30), {}, "one 2-D image"),
    ((3, 20, 30), {"axes": "cyx", "channel": 0}, "no time or z axis"),
    ((4, 5, 20, 30), {"axes": "tzyx"}, "Track one at a time"),
    ((4, 5, 20, 30), {}, "channels or slices"),  # refused by the engine's channel rule first
])
def test_refused_clearly(shape, kwargs, message):
    with pytest.raises((InvalidSequenceError, InvalidImageError), match=message):
        select_sequence(np.zeros(shape, np.uint8), **kwargs)
