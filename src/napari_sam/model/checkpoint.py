"""Safe checkpoint loading: weights only, strict keys, errors that say what is wrong.

Reading SAM weight files, whatever wrapper they were saved in.

Files are always opened with ``torch.load(weights_only=True)``: no arbitrary
object is ever unpickled. Recognised layouts:

- a bare SAM state dict (Meta's ``sam_vit_*.pth``, MobileSAM's ``mobile_sam.pt``,
  micro-sam's exported ``vit_*.pt`` in its BioImage.IO packages);
- a dict wrapping it under ``"model"`` or ``"state_dict"`` (training frameworks);
- micro-sam / torch_em layout: ``{"model_state": {...}, "decoder_state": {...}, ...}``
  where model keys may carry a ``"sam."`` prefix. The prefix is stripped and
  the instance-segmentation ``decoder_state`` (not part of SAM) is ignored here,
  as are ``instance_decoder.*`` keys (napari-sam's own attached decoder); both
  are read by :mod:`napari_sam.model.instance_decoder`.

Full torch_em *training* checkpoints also pickle optimizer/config objects; they
are refused, with a hint to export them to a plain state dict first.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

#: Key prefix micro-sam's trainer puts on SAM parameters inside ``model_state``.
MICRO_SAM_PREFIX = "sam."
#: Key prefix of an attached instance decoder in a napari-sam state dict (not part of SAM).
DECODER_PREFIX = "instance_decoder."


def _pickled_objects(path: Path) -> str:
    """What a checkpoint pickles besides tensors, e.g. ``"argparse.Namespace, numpy.dtype"`` (read without
    unpickling them), or a general phrase when the file's layout does not allow listing them."""
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint

        names = get_unsafe_globals_in_checkpoint(path)
    except Exception:  # older torch, or a legacy (non-zip) file
        names = []
    if not names:
        return "Python objects other than tensors"
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    return f"pickled Python objects besides tensors ({shown})"


def load_weights_only(path: str | os.PathLike, what: str = "Checkpoint") -> object:
    """``torch.load`` on the CPU that unpickles nothing but tensors and plain containers.

    Raises :class:`CheckpointError` naming what a refused file holds and how to export a plain
    state dict from it, or saying that the file is corrupt or truncated.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refused to load {what.lower()} {path}: it holds {_pickled_objects(path)}, and napari-sam reads "
            "only tensors, never pickled code. Export a plain state dict of tensors from it where it was made "
            "(torch.save(model.state_dict(), 'plain.pt'); for a micro-sam training checkpoint: "
            "micro_sam.util.export_custom_sam_model) and load that file."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{what} {path} is corrupt or truncated ({type(e).__name__}: {first}). "
            f"Delete it and download (or write) it again."
        ) from e


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Extract the SAM state dict from a loaded checkpoint object (see module docstring).

    Raises :class:`CheckpointError` when no mapping of tensors can be found.
    """
    if isinstance(obj, Mapping):
        if isinstance(obj.get("model_state"), Mapping):  # micro-sam / torch_em
            inner = obj["model_state"]
            obj = {
                (k[len(MICRO_SAM_PREFIX):] if isinstance(k, str) and k.startswith(MICRO_SAM_PREFIX) else k): v
                for k, v in inner.items()
            }
        else:
            for key in ("model", "state_dict"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
    if isinstance(obj, Mapping):  # an attached instance decoder is read separately (model/instance_decoder.py)
        obj = {k: v for k, v in obj.items() if not (isinstance(k, str) and k.startswith(DECODER_PREFIX))}
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} does not hold a state dict of tensors.")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source} does not hold a state dict of tensors (non-tensor entries: {shown}).")
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM checkpoint file into a plain state dict, safely (weights only).

    Raises :class:`CheckpointError` if the file is missing, truncated, corrupt,
    holds pickled objects, or has no recognisable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    return unwrap_state_dict(load_weights_only(path), source=f"Checkpoint {path}")


def guess_model_type(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture a state dict was written for (vit_b/l/h/t, tiny, a SAM 2.1 preset), or ``"unknown"``."""
    if "image_encoder.trunk.pos_embed" in state_dict:
        from .sam2.config import guess_sam2_type

        return guess_sam2_type(state_dict)
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


def check_keys(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], heading: Callable[[], str]
) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s (a strict load would fail).

    Raises :class:`CheckpointError`: ``heading()`` (called only on a mismatch; it may raise a more
    specific error itself), then up to five of the missing, unexpected and wrong-shape keys each.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = [heading()]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError("\n".join(parts))


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], model_type: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; on mismatch raise a CheckpointError that lists the keys."""

    def heading() -> str:
        guess = guess_model_type(state_dict)
        if guess.startswith("sam2"):
            raise CheckpointError(
                f"This is a SAM 2.1 checkpoint ({guess!r}), not a {model_type!r} SAM 1 model. Load it with "
                f"napari_sam.load_model (which recognises SAM 2.1 files) or napari_sam.model.sam2.build_sam2."
            )
        return f"The checkpoint does not fit a {model_type!r} model (it looks like {guess!r})."

    check_keys(model, state_dict, heading)
    check_finite(state_dict)
    model.load_state_dict(state_dict, strict=True)


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str = "The checkpoint") -> None:
    """Refuse weights holding NaN or infinite values (they give empty masks with NaN scores, silently).

    Raises :class:`CheckpointError` naming the first tensors affected.
    """
    bad = []
    with torch.no_grad():
        for name, t in state_dict.items():
            if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
                bad.append(name)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"{source} holds NaN or infinite weights (in {shown}); the model would give empty masks with NaN "
            "scores. The file is damaged or comes from a diverged training run: use an earlier checkpoint "
            "or download the weights again."
        )
