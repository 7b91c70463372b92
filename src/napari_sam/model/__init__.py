"""Pure-PyTorch Segment Anything: encoders, prompt encoder, mask decoder and builders.

Only torch, numpy and the standard library are imported here.
"""

from .build import build_from_config, build_sam, sam_model_registry
from .checkpoint import guess_model_type, read_state_dict
from .config import PRESETS, SamConfig, TinyViTConfig, ViTConfig, DecoderConfig, get_config
from .instance_decoder import InstanceDecoder, InstanceDecoderConfig, read_instance_decoder
from .sam import Sam
from .transforms import ResizeLongestSide

__all__ = [
    "PRESETS",
    "DecoderConfig",
    "InstanceDecoder",
    "InstanceDecoderConfig",
    "ResizeLongestSide",
    "Sam",
    "SamConfig",
    "TinyViTConfig",
    "ViTConfig",
    "build_from_config",
    "build_sam",
    "get_config",
    "guess_model_type",
    "read_instance_decoder",
    "read_state_dict",
    "sam_model_registry",
]
