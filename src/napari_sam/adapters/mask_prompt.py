"""A committed mask as a mask prompt: low-resolution logits in the model's input frame.

SAM's prompt encoder takes (1, 4h, 4w) logits covering the padded square input
of side ``img_size``. A full-resolution (H, W) mask is resized like the image
(longest side to ``img_size``), padded at the bottom/right, downsampled to the
logit grid, and mapped from [0, 1] coverage to [-value, +value] logits.
"""

from __future__ import annotations

import numpy as np


MASK_LOGIT = 8.0


def mask_to_logits(
    mask: np.ndarray, img_size: int, mask_input_size: tuple[int, int], value: float = MASK_LOGIT,
    resized_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """(H, W) bool mask -> (1, mh, mw) float32 logits for ``mask_input`` (mh, mw = ``mask_input_size``).

    ``resized_hw``: (h, w) of the image inside the encoder input; default: longest side to
    ``img_size`` (SAM 1); SAM 2.1 resizes every image to (img_size, img_size).
    """
    from skimage.transform import resize

    mask = np.asarray(mask, dtype=np.float32)
    if resized_hw is None:
        from ..model.transforms import get_preprocess_shape  # on use: napari_sam.model imports torch

        resized_hw = get_preprocess_shape(mask.shape[0], mask.shape[1], img_size)
    h, w = (int(s) for s in resized_hw)
    resized = resize(mask, (h, w), order=1, anti_aliasing=True, preserve_range=True)
    padded = np.zeros((img_size, img_size), np.float32)
    padded[:h, :w] = resized
    low = resize(padded, tuple(mask_input_size), order=1, anti_aliasing=True, preserve_range=True)
    return ((2.0 * np.clip(low, 0.0, 1.0) - 1.0) * value).astype(np.float32)[None]
