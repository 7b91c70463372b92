"""Safe checkpoint loading: weights only, strict keys, errors that say what is wrong."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

# A parameter whose shape tells the architecture apart.
_SIGNATURE_KEYS = {
    "image_encoder.pos_embed": "ViT encoder",
    "image_encoder.patch_embed.seq.0.c.weight": "TinyViT encoder (vit_t)",
}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a state dict without unpickling arbitrary objects.

    Accepts a bare state dict or one wrapped under a ``"model"`` /
    ``"state_dict"`` key (as training frameworks save them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refused to load {path}: it contains objects other than tensors, and napari-sam never "
            f"unpickles arbitrary code. Re-save it as a plain state dict. ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0]}). "
            f"Delete it and download it again."
        ) from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"Checkpoint {path} does not hold a state dict of tensors.")
    return dict(obj)


def guess_model_type(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture a state dict was written for (vit_b/l/h/t or tiny), or ``"unknown"``."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        return "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is None:
        return "unknown"
    width = pos.shape[-1]
    depth = 1 + max(
        (int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")), default=-1
    )
    return {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (192, 6): "tiny"}.get(
        (width, depth), f"unknown ViT (width {width}, depth {depth})"
    )


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], model_type: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; on mismatch raise a CheckpointError that lists the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        guess = guess_model_type(state_dict)
        parts = [f"The checkpoint does not fit a {model_type!r} model (it looks like {guess!r})."]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)
