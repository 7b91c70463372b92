"""Build SAM 2.1 models and load Meta's checkpoints safely (weights only, strict keys)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ...errors import CheckpointError
from ..checkpoint import check_finite, check_keys, load_weights_only, unwrap_state_dict
from .config import SAM2_PRESETS, Sam2Config, get_sam2_config, guess_sam2_type
from .sam2 import SAM2Model

#: Optional entry of a SAM 2.1 checkpoint beside ``model``: the square input size (pixels) its weights are for.
IMAGE_SIZE_KEY = "image_size"


def recorded_image_size(checkpoint: object, source: str = "The checkpoint") -> int | None:
    """The input size a loaded checkpoint records (``{"model": ..., "image_size": 512}``), or None (Meta's files).

    Raises :class:`CheckpointError` when the recorded value is not a positive multiple of 32.
    """
    if not isinstance(checkpoint, Mapping) or IMAGE_SIZE_KEY not in checkpoint:
        return None
    size = checkpoint[IMAGE_SIZE_KEY]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 32:
        raise CheckpointError(
            f"{source} records {IMAGE_SIZE_KEY}={size!r}, but the input size must be a positive multiple of 32 "
            f"pixels (Meta's models use 1024). Save the file again with a valid {IMAGE_SIZE_KEY!r} or without it."
        )
    return size


def is_sam2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the tensors are those of a SAM 2 model (a Hiera trunk and a memory encoder)."""
    return "image_encoder.trunk.pos_embed" in state_dict or any(k.startswith("memory_encoder.") for k in state_dict)


def load_sam2_state(model: SAM2Model, state_dict: Mapping[str, torch.Tensor], source: str = "The checkpoint") -> None:
    """Load strictly; a SAM 1 file or another size gets a :class:`CheckpointError` that says so."""
    if not is_sam2_state_dict(state_dict):
        from ..checkpoint import guess_model_type

        raise CheckpointError(
            f"{source} holds a SAM 1 model (it looks like {guess_model_type(state_dict)!r}), not SAM 2.1. "
            f"Load it with napari_sam.load_model or build_sam, and use SamPredictor rather than the SAM 2 predictors."
        )
    check_keys(model, state_dict, lambda: (
        f"{source} does not fit a {model.cfg.name!r} model (it looks like {guess_sam2_type(state_dict)!r})."
    ))
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def build_sam2(
    model_type: str | Sam2Config = "sam2.1_hiera_tiny",
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    image_size: int | None = None,
) -> SAM2Model:
    """A SAM 2.1 model in eval mode.

    Args:
        model_type: a preset name (``sam2.1_hiera_tiny``, ``_small``, ``_base_plus``,
            ``_large``; also ``hiera_tiny`` or Meta's ``sam2.1_hiera_t``) or a config.
            ``None`` with a checkpoint: the preset is read from its tensors.
        checkpoint: a ``sam2.1_hiera_*.pt`` file (read with ``weights_only=True``) or
            a state dict; ``None`` keeps the random initialisation. A file may record
            its input size beside ``model`` as ``image_size`` (see ``image_size``).
        device: where to put the model (default CPU).
        image_size: input side in pixels (a multiple of 32); default the size the
            checkpoint file records, else the preset's 1024.
    """
    state = None
    source = "The checkpoint"
    if checkpoint is not None:
        if isinstance(checkpoint, Mapping):
            state = dict(checkpoint)
        else:
            source = f"Checkpoint {checkpoint}"
            if not os.path.isfile(checkpoint):
                raise CheckpointError(f"Checkpoint file not found: {checkpoint}")
            raw = load_weights_only(checkpoint)
            state = unwrap_state_dict(raw, source=source)
            if image_size is None:
                image_size = recorded_image_size(raw, source)
    if model_type is None:
        if state is None:
            raise CheckpointError("Name a SAM 2.1 model type or give a checkpoint to read it from.")
        if not is_sam2_state_dict(state):
            load_sam2_state(SAM2Model(SAM2_PRESETS["sam2.1_hiera_tiny"]), state, source)  # raises the SAM 1 error
        model_type = guess_sam2_type(state)
        if model_type.startswith("unknown"):
            raise CheckpointError(f"{source} is a SAM 2 model of no known size ({model_type}).")
    cfg = model_type if isinstance(model_type, Sam2Config) else get_sam2_config(model_type)
    if image_size is not None:
        if image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}.")
        cfg = cfg.with_image_size(image_size)
    model = SAM2Model(cfg)
    if state is not None:
        load_sam2_state(model, state, source)
    model.eval()
    if device is not None:
        model.to(device)
    return model
