"""SAM 2.1 configurations as frozen dataclasses, with the four published presets.

A configuration fixes every parameter name and shape of a :class:`~.sam2.SAM2Model`,
so the published ``sam2.1_hiera_*.pt`` files load into the matching preset with a
strict key check. The values are those of Meta's ``configs/sam2.1/sam2.1_hiera_*.yaml``
(sam2 1.1.0). ``image_size`` changes no parameter shape: a smaller square input (a
multiple of 32 pixels) trades detail for speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera trunk: four stages of multi-scale blocks with query pooling between stages."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output widths of the stages, lowest resolution first (the FPN neck's input order)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclass(frozen=True)
class Sam2Config:
    """A whole SAM 2.1: image encoder, prompt encoder and decoder, memory encoder and attention."""

    name: str
    trunk: HieraConfig = field(default_factory=HieraConfig)
    image_size: int = 1024
    hidden_dim: int = 256  # d_model of the neck, the decoder and the memory attention
    mem_dim: int = 64  # width of the memory features
    num_maskmem: int = 7  # the prompted frame(s) + 6 previous frames
    memory_attention_layers: int = 4
    memory_attention_ffn_dim: int = 2048
    fuser_layers: int = 2
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    # Inference settings of Meta's builders (build_sam2 / build_sam2_video_predictor):
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    binarize_mask_from_pts_for_mem_enc: bool = True
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    backbone_stride: int = 16

    @property
    def embedding_size(self) -> int:
        """Side of the (square) stride-16 feature grid the decoder works on."""
        return self.image_size // self.backbone_stride

    def with_image_size(self, image_size: int) -> "Sam2Config":
        return replace(self, image_size=image_size)


HIERA_TINY = Sam2Config("sam2.1_hiera_tiny", HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9)))
HIERA_SMALL = Sam2Config("sam2.1_hiera_small", HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13)))
HIERA_BASE_PLUS = Sam2Config(
    "sam2.1_hiera_base_plus",
    HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), window_pos_embed_bkg_spatial_size=(14, 14)),
)
HIERA_LARGE = Sam2Config(
    "sam2.1_hiera_large", HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8))
)

SAM2_PRESETS: dict[str, Sam2Config] = {c.name: c for c in (HIERA_TINY, HIERA_SMALL, HIERA_BASE_PLUS, HIERA_LARGE)}
#: Short names accepted for the presets (Meta's config file stems and size words).
SAM2_ALIASES = {
    **{f"hiera_{s}": f"sam2.1_hiera_{s}" for s in ("tiny", "small", "base_plus", "large")},
    "sam2.1_hiera_t": "sam2.1_hiera_tiny",
    "sam2.1_hiera_s": "sam2.1_hiera_small",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus",
    "sam2.1_hiera_l": "sam2.1_hiera_large",
}


def get_sam2_config(name: str) -> Sam2Config:
    """The preset called ``name`` (``"sam2.1_hiera_tiny"``, ``"hiera_tiny"``, ``"sam2.1_hiera_t"``, ...)."""
    from ...errors import UnknownModelError

    key = SAM2_ALIASES.get(name, name)
    if key not in SAM2_PRESETS:
        raise UnknownModelError(
            f"Unknown SAM 2.1 model type {name!r}; known: {', '.join(SAM2_PRESETS)}."
        )
    return SAM2_PRESETS[key]


#: (trunk width, number of Hiera blocks) -> preset name.
_TRUNKS = {(c.trunk.embed_dim, sum(c.trunk.stages)): name for name, c in SAM2_PRESETS.items()}


def guess_sam2_type(state_dict) -> str:
    """The SAM 2.1 preset a state dict fits (e.g. ``"sam2.1_hiera_tiny"``), or ``"unknown ..."``."""
    pos = state_dict.get("image_encoder.trunk.pos_embed")
    if pos is None:
        return "unknown (no Hiera trunk)"
    depth = 1 + max((int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks.")), default=-1)
    width = int(pos.shape[1])
    return _TRUNKS.get((width, depth), f"unknown Hiera (width {width}, {depth} blocks)")
