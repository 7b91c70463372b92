"""Random SAM 2.1 weights for tests (no reference package needed)."""

from __future__ import annotations

import torch


def perturbed_sam2_state(name: str = "sam2.1_hiera_tiny", seed: int = 0, scale: float = 0.02) -> dict:
    """A random SAM 2.1 state dict with every float tensor perturbed (many initialise to zero)."""
    from napari_sam.model.sam2 import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(name)
    g = torch.Generator().manual_seed(seed + 1)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
        out[k] = v.clone()
    # a positive object-score bias: with random weights the occlusion head would otherwise often
    # call the object absent and every mask would be empty (parity would hold trivially)
    out["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] = torch.full((1,), 2.0)
    return out


def tiny_sam2_model(seed: int = 0):
    """A perturbed random hiera_tiny at 256 px input: a SAM 2.1 model that embeds in about a second."""
    from napari_sam.model.sam2 import build_sam2

    return build_sam2("sam2.1_hiera_tiny", perturbed_sam2_state("sam2.1_hiera_tiny", seed=seed), image_size=256)


def blob_image(shape: tuple[int, int], blobs, seed: int):
    """An RGB uint8 image of ``shape`` with bright ellipses ``blobs`` ((row, col, a, b), ...) on noise."""
    import numpy as np
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
    for r, c, a, b in blobs:
        rr, cc = ellipse(r, c, a, b, shape)
        img[rr, cc] = rng.integers(150, 255, 3, dtype=np.uint8)
    return img


class EncoderCalls:
    """Counts passes through a model's image encoder (a forward hook; ``close()`` removes it)."""

    def __init__(self, model):
        self.n = 0
        self._handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self):
        self._handle.remove()
