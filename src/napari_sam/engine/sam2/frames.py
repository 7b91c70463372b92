"""Frames of a sequence for SAM 2, read lazily one at a time.

A :class:`FrameSource` wraps a (T, H, W) or (T, H, W, 3|4) array (numpy, zarr, dask,
a TIFF or zarr store opened by napari-sam) or a folder of JPEG frames named by their
index (``00000.jpg``, as Meta's video predictor expects). Nothing is read until a frame
is asked for, and nothing is kept: the predictor holds the features of the frame it
works on, so memory does not grow with the number of frames.

Every frame becomes 8-bit RGB (uint8 RGB as is; other data by napari-sam's intensity
rule, with limits shared by the whole sequence), is resized to S x S with PIL's default
filter and normalised: exactly Meta's JPEG-folder preprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InvalidSequenceError
from ..images.normalize import intensity_range, to_uint8_rgb

JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
LIMIT_SAMPLE_FRAMES = 8  # frames read to fix shared intensity limits of non-uint8 data


def _jpeg_frames(folder: Path) -> list[Path]:
    names = [p for p in folder.iterdir() if p.suffix in JPEG_SUFFIXES]
    try:
        names.sort(key=lambda p: int(p.stem))
    except ValueError:
        raise InvalidSequenceError(
            f"JPEG frames in {folder} must be named by their index (e.g. 00000.jpg, 00001.jpg); "
            f"found {', '.join(p.name for p in names[:3])}..."
        ) from None
    if not names:
        raise InvalidSequenceError(f"No JPEG frames (*.jpg, *.jpeg) found in {folder}.")
    return names


class FrameSource:
    """A sequence of 2-D frames, read on demand.

    Args:
        source: an array-like with ``shape`` and indexing, (T, H, W) gray or
            (T, H, W, 3|4) colour; or a path: a folder of JPEG frames, a TIFF
            file or a zarr store (opened lazily).
        intensity_limits: (low, high) for non-uint8 data; by default computed
            from up to 8 frames spread over the sequence.
    """

    def __init__(self, source: Any, intensity_limits: tuple[float, float] | None = None) -> None:
        self._paths: list[Path] | None = None
        self._array = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if path.is_dir() and not (path / ".zarray").exists() and not (path / "zarr.json").exists() \
                    and not (path / ".zgroup").exists() and any(p.suffix in JPEG_SUFFIXES for p in path.iterdir()):
                self._paths = _jpeg_frames(path)
            else:
                from ..images.io import open_image

                self._array = open_image(path).data
        else:
            self._array = source
        if self._paths is not None:
            from PIL import Image

            sizes = []
            for path in self._paths:  # headers only: frames of different sizes are refused up front
                with Image.open(path) as im:
                    sizes.append(im.size)
            w, h = sizes[0]
            bad = next((i for i, size in enumerate(sizes) if size != (w, h)), None)
            if bad is not None:
                raise InvalidSequenceError(
                    f"Frames have different shapes: {self._paths[bad].name} is {sizes[bad][1]} x {sizes[bad][0]}, "
                    f"the first frame {h} x {w}. Resize or crop them to one size."
                )
            self.num_frames, self.height, self.width = len(self._paths), h, w
            self._limits = None
        else:
            shape = tuple(getattr(self._array, "shape", ()))
            if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (3, 4)):
                self.num_frames, self.height, self.width = shape[0], shape[1], shape[2]
            else:
                raise InvalidSequenceError(
                    f"A frame sequence must be (T, H, W) or (T, H, W, 3|4) (time or z first); got shape {shape}. "
                    f"Select the axes to track through first (e.g. one channel)."
                )
            self._limits = intensity_limits
            if self._limits is None and np.dtype(self._array.dtype) != np.uint8:
                picks = np.unique(np.linspace(0, self.num_frames - 1, min(LIMIT_SAMPLE_FRAMES, self.num_frames)).astype(int))
                self._limits = intensity_range(np.stack([np.asarray(self._array[int(i)]) for i in picks]))
        if self.num_frames < 2:
            raise InvalidSequenceError(
                f"The sequence has {self.num_frames} frame(s); tracking needs at least 2. "
                f"For a single image use SAM2ImagePredictor."
            )

    def __len__(self) -> int:
        return self.num_frames

    def rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8."""
        if self._paths is not None:
            from PIL import Image

            with Image.open(self._paths[index]) as im:
                rgb = np.asarray(im.convert("RGB"))
        else:
            rgb = to_uint8_rgb(np.asarray(self._array[index]), self._limits)
        if rgb.shape[:2] != (self.height, self.width):
            where = self._paths[index] if self._paths is not None else f"frame {index}"
            raise InvalidSequenceError(
                f"Frames have different shapes: {where} is {rgb.shape[0]} x {rgb.shape[1]}, the first frame "
                f"{self.height} x {self.width}. Resize or crop them to one size."
            )
        return rgb

    def model_input(self, index: int, size: int, mean, std) -> torch.Tensor:
        """Frame ``index`` resized to (3, size, size), normalised float32 (Meta's JPEG pipeline)."""
        return rgb_model_input(self.rgb(index), size, mean, std)


def rgb_model_input(rgb: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) normalised float32, as :meth:`FrameSource.model_input`."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(rgb).resize((size, size))) / 255.0
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean) / std
