"""A training run's files: the checkpoint, the resumable training state beside it, atomic writes.

``out`` is a plain state dict of tensors (loadable by ``build_sam(..., checkpoint=)``
and Meta's package; with an instance decoder attached, its keys come under
``instance_decoder.``); ``<out>.state.pt`` holds what resuming needs (step, model and
optimizer state, losses, settings) as tensors and plain types only, read back with
``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import TrainingError

STATE_SUFFIX = ".state.pt"


def state_path(out: str | os.PathLike) -> Path:
    """The training-state file beside checkpoint ``out``."""
    out = Path(out)
    return out.with_name(out.name + STATE_SUFFIX)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plain_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict as a plain dict of contiguous CPU tensors (optionally cast floats to ``dtype``)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    return out


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder as ``out``, or an existing run's files unless resuming or overwriting."""
    if out.is_dir():
        raise TrainingError(f"The output {out} is a folder; give a file name such as {out / 'model.pt'}.")
    if resume:
        return
    existing = [p for p in (out, state_path(out)) if p.exists()]
    if existing and not overwrite:
        raise TrainingError(
            f"{existing[0]} exists already; pass overwrite=True (--overwrite) to replace it, "
            "resume=True (--resume) to continue that run, or choose another output name."
        )


STATE_KEYS = ("step", "model", "optimizer", "losses")


def load_training_state(sp: Path, model, optimizer, cfg) -> tuple[int, list[float]]:  # cfg: a TrainConfig
    """Restore model and optimizer from the training-state file ``sp``; returns (step, losses).

    Raises :class:`TrainingError` saying what is wrong with the file and how to go on.
    """
    from ..errors import CheckpointError
    from ..model.checkpoint import load_weights_only

    afresh = "start afresh with --overwrite (without --resume), or delete it"
    try:
        state = load_weights_only(sp, what="Training state")
    except CheckpointError as e:
        raise TrainingError(f"{e} To give up on that run instead: {afresh}.") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        have = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        raise TrainingError(f"{sp} is not a napari-sam training state (expected the entries {', '.join(STATE_KEYS)}; "
                            f"found {have}); {afresh}.")
    saved = state.get("config") or {}
    if bool(saved.get("decoder_only", cfg.decoder_only)) != cfg.decoder_only:
        raise TrainingError(
            f"{sp} was written by a run with decoder_only={saved.get('decoder_only')}; resume with the same setting."
        )
    try:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), [float(v) for v in state["losses"]]
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"{sp} does not fit this model and its settings ({first}); resume with the model and "
                            f"settings of that run, or {afresh}.") from None


__all__ = ["STATE_KEYS", "STATE_SUFFIX", "atomic_save", "check_output", "load_training_state", "plain_state_dict",
           "state_path"]
