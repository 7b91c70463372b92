"""Model configurations as frozen dataclasses, with the published presets.

A configuration fully determines the parameter names and shapes of a model,
so a checkpoint written for a preset loads with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ViTConfig:
    """SAM's ViT image encoder (ViTDet-style, windowed + global attention)."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class TinyViTConfig:
    """MobileSAM's TinyViT image encoder (convolutional stage + 3 attention stages)."""

    img_size: int = 1024
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    num_classes: int = 1000

    @property
    def embedding_size(self) -> int:
        return self.img_size // 16


@dataclass(frozen=True)
class DecoderConfig:
    """Prompt encoder + two-way transformer mask decoder."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM: encoder, prompt embedding width, decoder."""

    name: str
    encoder: ViTConfig | TinyViTConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def prompt_embed_dim(self) -> int:
        return self.encoder.out_chans

    @property
    def img_size(self) -> int:
        return self.encoder.img_size

    @property
    def embedding_size(self) -> int:
        return self.encoder.embedding_size

    def with_encoder(self, **changes) -> "SamConfig":
        return replace(self, encoder=replace(self.encoder, **changes))


VIT_B = SamConfig("vit_b", ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)))
VIT_L = SamConfig("vit_l", ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)))
VIT_H = SamConfig("vit_h", ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)))
VIT_T = SamConfig("vit_t", TinyViTConfig())
# The shipped small model: SAM's own ViT, narrower, shallower and at 256 px input,
# so Meta's reference modules can express it too.
TINY = SamConfig(
    "tiny",
    ViTConfig(
        img_size=256,
        patch_size=8,
        embed_dim=192,
        depth=6,
        num_heads=6,
        out_chans=128,
        window_size=8,
        global_attn_indexes=(2, 5),
    ),
    DecoderConfig(transformer_mlp_dim=512, transformer_num_heads=8, iou_head_hidden_dim=128),
)

PRESETS: dict[str, SamConfig] = {c.name: c for c in (VIT_B, VIT_L, VIT_H, VIT_T, TINY)}
# Published names that mean the same architecture.
ALIASES = {"default": "vit_h"}


def get_config(model_type: str) -> SamConfig:
    """Return the preset configuration for ``model_type`` (e.g. ``"vit_b"``)."""
    from ..errors import UnknownModelError

    key = ALIASES.get(model_type, model_type)
    if key not in PRESETS:
        raise UnknownModelError(
            f"Unknown model type {model_type!r}; known architectures: {', '.join(sorted(PRESETS))}."
        )
    return PRESETS[key]
