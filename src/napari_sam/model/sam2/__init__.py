"""SAM 2.1 in pure PyTorch: Hiera encoder, SAM heads with object scores, memory encoder and attention."""

from .build import build_sam2, guess_sam2_type, is_sam2_state_dict, load_sam2_state
from .config import SAM2_PRESETS, HieraConfig, Sam2Config, get_sam2_config
from .sam2 import NO_OBJ_SCORE, SAM2Model

__all__ = [
    "NO_OBJ_SCORE",
    "SAM2_PRESETS",
    "HieraConfig",
    "SAM2Model",
    "Sam2Config",
    "build_sam2",
    "get_sam2_config",
    "guess_sam2_type",
    "is_sam2_state_dict",
    "load_sam2_state",
]
