"""The instance decoder: a UNETR-style convolutional decoder on SAM's image embedding.

micro-sam's automatic instance segmentation ("AIS") attaches this decoder to the
SAM image encoder. It is torch_em's ``UNETR`` in the configuration micro-sam
uses (``backbone="sam"``, ``use_skip_connection=False``, ``out_channels=3``,
``final_activation="Sigmoid"``), applied to the encoder's output embedding (the
neck's C channels, 256 for the published models) exactly like micro-sam's
``DecoderAdapter``. Its three output maps, at the padded encoder-input
resolution (16 x the embedding grid), are:

- channel 0: foreground probability;
- channel 1: normalised distance to the object centre (small at centres);
- channel 2: normalised distance to the object boundary, inverted (small deep
  inside objects).

Parameter names and shapes equal the published ``*_decoder`` files (their keys
are the UNETR's own, minus ``encoder.*``), so they load with a strict key check.
Two upsampling variants exist in the published files and torch_em: bilinear
interpolation followed by a 1x1 convolution (keys ``...conv.weight``) and
transposed 2x2 convolutions (keys ``...block.weight``); :func:`config_from_state`
tells them apart from the keys, as micro-sam does.

Layout (F = ``initial_features`` = 64, features per level 8F, 4F, 2F, F)::

    z12 (C, h, w) -- deconv1 -> z9 (8F, 2h) -- deconv2 -> z6 (4F, 4h)
                  -- deconv3 -> z3 (2F, 8h) -- deconv4 -> z0 (F, 16h)
    base(z12) (8F, h) -> decoder level i: upsample x2 (halving the channels),
        concatenate the centre channels of z9 / z6 / z3, conv block
    -> deconv_out (x2, F) -> concat z0 -> decoder_head -> out_conv (3) -> sigmoid

With ``depth=3`` (the bundled ``tiny``: 8 px patches, 32 x 32 embedding, 256 px maps)
the same layout has one stage less: levels 4F, 2F, F, skip inputs ``deconv1..3``.

The "centre channels" are torch_em's centre crop of a skip input that has twice
the channels of the upsampled features (its ``Decoder._crop`` crops the channel
axis too); they are reproduced here for parity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .checkpoint import DECODER_PREFIX, check_finite, check_keys


@dataclass(frozen=True)
class InstanceDecoderConfig:
    """Shape of an instance decoder (fully determines its parameter names and shapes).

    Attributes:
        embed_dim: channels of the image embedding it reads (the encoder's ``out_chans``).
        initial_features: channels of the finest level (64 in the published decoders).
        out_channels: output maps (3: foreground, centre distance, boundary distance).
        conv_transpose: upsample with transposed 2x2 convolutions instead of bilinear
            interpolation + 1x1 convolution.
        depth: x2 upsampling stages from the embedding to the output maps (the maps are
            ``2**depth`` x the embedding grid). 4 in the published decoders (16 px patches:
            64 -> 1024); 3 for the bundled ``tiny`` (8 px patches: 32 -> 256).
    """

    embed_dim: int = 256
    initial_features: int = 64
    out_channels: int = 3
    conv_transpose: bool = False
    depth: int = 4

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"An instance decoder needs at least 2 upsampling stages, got depth={self.depth}.")

    @property
    def features(self) -> tuple[int, ...]:
        """Channels per level, coarsest first: (8F, 4F, 2F, F) at depth 4, (4F, 2F, F) at depth 3."""
        f = self.initial_features
        return tuple(f * 2 ** (self.depth - 1 - i) for i in range(self.depth))


class _ConvBlock(nn.Module):
    """torch_em ``ConvBlock2d``: (InstanceNorm, 3x3 conv, ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Upsample(nn.Module):
    """x2 bilinear interpolation, then a 1x1 convolution (torch_em ``Upsampler2d``).

    Computed in the other order, the 1x1 convolution first at the low resolution: both are
    linear and bilinear weights sum to 1 (bias included), so the result is the same up to
    rounding, for a quarter of the convolution's work and, where the channels halve, half
    the interpolation's.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)


class _TransposedUpsample(nn.Module):
    """x2 transposed 2x2 convolution (torch_em ``SingleDeconv2DBlock``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Conv(nn.Module):
    """A 3x3 convolution wrapped as torch_em's ``SingleConv2DBlock`` (hence ``.block``)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsampler(cfg: InstanceDecoderConfig, in_ch: int, out_ch: int) -> nn.Module:
    return _TransposedUpsample(in_ch, out_ch) if cfg.conv_transpose else _Upsample(in_ch, out_ch)


class _UpBlock(nn.Module):
    """torch_em ``Deconv2DBlock``: upsample x2, 3x3 conv, BatchNorm, ReLU.

    In eval mode the BatchNorm (its running statistics) is folded into the convolution's
    weights and bias, which saves a pass over the full-resolution features; equal up to rounding.
    """

    def __init__(self, cfg: InstanceDecoderConfig, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsampler(cfg, in_ch, out_ch), _Conv(out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsample, conv, norm, _ = self.block
        if self.training or not norm.track_running_stats or norm.running_var is None:
            return self.block(x)
        weight, bias = fold_batch_norm(conv.block, norm)
        return F.relu(F.conv2d(upsample(x), weight, bias, padding=conv.block.padding), inplace=True)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution, ``norm`` using its running statistics."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    bias = (bias - norm.running_mean) * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    return conv.weight * scale[:, None, None, None], bias


class _Levels(nn.Module):
    """torch_em's ``Decoder``: per level, upsample, concatenate the skip input, conv block."""

    def __init__(self, cfg: InstanceDecoderConfig) -> None:
        super().__init__()
        feats = cfg.features
        self.blocks = nn.ModuleList(_ConvBlock(i, o) for i, o in zip(feats[:-1], feats[1:]))
        self.samplers = nn.ModuleList(_upsampler(cfg, i, o) for i, o in zip(feats[:-1], feats[1:]))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _centre_crop(skip, x.shape)], dim=1))
        return x


def _centre_crop(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Centre-crop every axis but the batch axis of ``t`` to ``shape`` (channels included, as torch_em)."""
    index = [slice(None)]
    for have, want in zip(t.shape[1:], shape[1:]):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return t[tuple(index)]


class InstanceDecoder(nn.Module):
    """Embedding -> foreground, centre-distance and boundary-distance maps (see module docstring)."""

    def __init__(self, cfg: InstanceDecoderConfig = InstanceDecoderConfig()) -> None:
        super().__init__()
        self.config = cfg
        feats = cfg.features
        f1 = feats[-1]
        self.decoder = _Levels(cfg)
        # deconv1 .. deconv<depth>: the skip inputs, from 2x to 2**depth x the embedding grid
        for i, (cin, cout) in enumerate(zip((cfg.embed_dim, *feats[:-1]), feats), start=1):
            setattr(self, f"deconv{i}", _UpBlock(cfg, cin, cout))
        self.base = _ConvBlock(cfg.embed_dim, feats[0])
        self.out_conv = nn.Conv2d(f1, cfg.out_channels, 1)
        self.deconv_out = _upsampler(cfg, f1, f1)
        self.decoder_head = _ConvBlock(2 * f1, f1)

    def forward(self, embedding: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """Decode an embedding.

        Args:
            embedding: (B, C, h, w) float image embedding (C = ``config.embed_dim``).
            activate: apply the sigmoid (``False`` returns the logits).

        Returns:
            (B, 3, s h, s w) float maps (s = ``2**config.depth``, 16 for the published
            decoders) in the padded encoder-input frame; use
            :func:`to_image_frame` to crop and resize them to the image.
        """
        if embedding.ndim != 4 or embedding.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"The instance decoder reads (B, {self.config.embed_dim}, h, w) embeddings; "
                f"got {tuple(embedding.shape)}."
            )
        if not self.training and embedding.device.type == "cpu":
            # oneDNN's CPU convolutions run faster on channels-last (NHWC) features, every layer follows
            embedding = embedding.contiguous(memory_format=torch.channels_last)
        skips = []
        z = embedding
        for i in range(1, self.config.depth + 1):
            z = getattr(self, f"deconv{i}")(z)
            skips.append(z)
        x = self.decoder(self.base(embedding), skips[:-1])
        x = self.decoder_head(torch.cat([self.deconv_out(x), skips[-1]], dim=1))
        x = self.out_conv(x).contiguous()  # back to the standard layout (a small copy: 3 channels)
        return torch.sigmoid(x) if activate else x


def to_image_frame(
    maps: torch.Tensor, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Bring decoder maps from the padded encoder-input frame to the image (torch_em's ``postprocess_masks``).

    Args:
        maps: (B, K, s, s) decoder output.
        img_size: the encoder's square input size (maps are first resized to it).
        input_size: (h', w') of the resized image inside the padded input.
        original_size: (H, W) of the image.

    Returns:
        (B, K, H, W) float maps.
    """
    if tuple(maps.shape[-2:]) != (img_size, img_size):
        maps = F.interpolate(maps, (img_size, img_size), mode="bilinear", align_corners=False)
    maps = maps[..., : input_size[0], : input_size[1]]
    if tuple(maps.shape[-2:]) == tuple(original_size):  # a resize to the same size is the identity
        return maps
    return F.interpolate(maps, tuple(original_size), mode="bilinear", align_corners=False)


def tiny_decoder_config(embed_dim: int) -> InstanceDecoderConfig:
    """The decoder shape trained with the bundled ``tiny`` model (``scripts/train_tiny.py --decoder``):
    32 initial features and 3 stages (8 px patches: a 32 x 32 embedding -> 256 px maps)."""
    return InstanceDecoderConfig(embed_dim=embed_dim, initial_features=32, depth=3)


def config_from_state(state: Mapping[str, torch.Tensor], source: str = "decoder checkpoint") -> InstanceDecoderConfig:
    """Read the decoder configuration from a state dict's keys and shapes."""
    try:
        base = state["base.block.1.weight"]
        out = state["out_conv.weight"]
    except KeyError:
        sample = ", ".join(sorted(state)[:5])
        raise CheckpointError(
            f"{source} is not an instance-decoder state dict (no 'base.block.1.weight' / 'out_conv.weight'; "
            f"first keys: {sample or 'none'}). Expected one of micro-sam's '*_decoder' files."
        ) from None
    return InstanceDecoderConfig(
        embed_dim=int(base.shape[1]),
        initial_features=int(out.shape[1]),
        out_channels=int(out.shape[0]),
        conv_transpose="decoder.samplers.0.block.weight" in state,
        depth=_depth_from_keys(state),
    )


def _depth_from_keys(state: Mapping[str, torch.Tensor]) -> int:
    """Upsampling stages of a decoder state dict: its highest ``deconv<k>.`` index (4 if none)."""
    import re

    found = [int(m.group(1)) for k in state if isinstance(k, str) and (m := re.match(r"deconv(\d+)\.", k))]
    return max(found, default=4)


def embedded_decoder_state(obj: object) -> dict[str, torch.Tensor] | None:
    """The decoder state inside a loaded *model* checkpoint (micro-sam's ``decoder_state`` or
    napari-sam's ``instance_decoder.*`` keys), or ``None`` when it holds none."""
    if isinstance(obj, Mapping) and (
        (isinstance(obj.get("decoder_state"), Mapping) and len(obj["decoder_state"]) > 0)
        or any(isinstance(k, str) and k.startswith(DECODER_PREFIX) for k in obj)
    ):
        return unwrap_decoder_state(obj)
    return None


def unwrap_decoder_state(obj: object, source: str = "decoder checkpoint") -> dict[str, torch.Tensor]:
    """The decoder's state dict from a loaded file: a bare decoder state dict (the published
    ``*_decoder`` files), micro-sam's combined ``{"decoder_state": ...}`` layout, or
    napari-sam's own keys under ``instance_decoder.``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("decoder_state"), Mapping):
        obj = obj["decoder_state"]
    elif isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith(DECODER_PREFIX) for k in obj):
        obj = {k[len(DECODER_PREFIX):]: v for k, v in obj.items() if k.startswith(DECODER_PREFIX)}
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} does not hold an instance-decoder state dict.")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source} holds non-tensor entries ({', '.join(bad[:5])}); not a decoder state dict.")
    return dict(obj)


def build_instance_decoder(
    state: Mapping[str, torch.Tensor], embed_dim: int | None = None, source: str = "decoder checkpoint"
) -> InstanceDecoder:
    """Build a decoder from a state dict, strictly; ``embed_dim`` is the encoder it must pair with.

    Raises :class:`CheckpointError` naming missing / unexpected / wrong-shape keys,
    or saying which encoder width the decoder was trained for.
    """
    cfg = config_from_state(state, source)
    if embed_dim is not None and cfg.embed_dim != embed_dim:
        raise CheckpointError(
            f"{source} was trained for an encoder with {cfg.embed_dim}-channel embeddings, but this model's "
            f"encoder gives {embed_dim} channels: the decoder belongs to another model. Use the decoder "
            f"published with this model's encoder."
        )
    decoder = InstanceDecoder(cfg)
    check_keys(decoder, state, lambda: f"{source} does not fit the instance decoder ({cfg}).")
    check_finite(state, source)
    decoder.load_state_dict(state, strict=True)
    return decoder.eval()


def read_instance_decoder(path: str | os.PathLike, embed_dim: int | None = None) -> InstanceDecoder:
    """Load a decoder file safely (``weights_only=True``, strict keys); see :func:`build_instance_decoder`."""
    from .checkpoint import load_weights_only

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Decoder file not found: {path}")
    source = f"Decoder file {path}"
    return build_instance_decoder(unwrap_decoder_state(load_weights_only(path), source), embed_dim, source)


__all__ = [
    "InstanceDecoder",
    "InstanceDecoderConfig",
    "build_instance_decoder",
    "config_from_state",
    "embedded_decoder_state",
    "tiny_decoder_config",
    "read_instance_decoder",
    "to_image_frame",
    "unwrap_decoder_state",
]
