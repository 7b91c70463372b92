"""Meta's SAM 2.1 (PyPI ``sam2`` 1.1.0) for parity tests, built with the same random weights.

Importing this module skips the calling test module when ``sam2`` (or hydra) is missing.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("hydra", reason="Meta's sam2 reference needs hydra-core (see scripts/test.sh)")
sam2 = pytest.importorskip("sam2", reason="Meta's sam2 1.1.0 is not installed (see scripts/test.sh)")

SHORT = {"sam2.1_hiera_tiny": "t", "sam2.1_hiera_small": "s", "sam2.1_hiera_base_plus": "b+", "sam2.1_hiera_large": "l"}
# The settings Meta's build_sam2 / build_sam2_video_predictor add ("apply_postprocessing"),
# except fill_hole_area: its hole filling needs sam2's CUDA extension and is skipped on CPU.
IMAGE_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
VIDEO_OVERRIDES = [
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    *IMAGE_OVERRIDES,
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=0",
]


def reference_config(name: str, overrides=(), image_size: int | None = None):
    """Meta's resolved hydra config of preset ``name``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    extra = list(overrides)
    if image_size is not None:
        extra.append(f"++model.image_size={image_size}")
    cfg = compose(config_name=f"configs/sam2.1/sam2.1_hiera_{SHORT[name]}.yaml", overrides=extra)
    OmegaConf.resolve(cfg)
    return cfg


def build_reference(name: str, state_dict=None, overrides=(), image_size: int | None = None):
    """Meta's model (eval mode, CPU) of preset ``name``, loaded with ``state_dict`` if given."""
    from hydra.utils import instantiate

    model = instantiate(reference_config(name, overrides, image_size).model, _recursive_=True)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


from sam2_state import perturbed_sam2_state  # noqa: E402,F401  (re-exported for the parity tests)
