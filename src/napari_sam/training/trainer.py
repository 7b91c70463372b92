"""The training loop: SAM's interactive recipe, checkpoints, resume.

:func:`fine_tune` is a generator that yields :class:`~napari_sam.engine.progress.Progress`
after each optimisation step and returns a :class:`TrainResult`;
:func:`fine_tune_blocking` runs it to the end. One step:

1. encode ``images_per_step`` images (with gradients unless ``decoder_only``);
2. draw up to ``objects_per_image`` objects per image; each gets a first prompt,
   a single positive point (with probability ``point_probability``) or a
   slightly noisy box;
3. ``n_interactions`` decoder rounds: after each round a correction click is
   drawn from the error region (positive in a missed part, negative in a false
   positive) and the previous round's low-resolution logits are fed back as
   the mask prompt;
4. loss per round: ``20 * focal + dice`` on the mask (for a single point, the
   minimum over the three multimask outputs), plus MSE between predicted and
   actual IoU; averaged over rounds;
5. when the model carries an instance decoder (``model.instance_decoder``) and
   ``instance_weight > 0``: plus ``instance_weight`` x the decoder's loss on the
   three target maps (:mod:`.instance_loss`), from the same encoder pass (joint
   training for clicks and automatic instance segmentation, as micro-sam trains).
   ``instance_lr`` gives the new decoder its own peak learning rate.

Checkpoints (:mod:`.run_state`): ``out`` is a plain state dict of tensors (the published format,
loadable by ``build_sam(..., checkpoint=)`` and Meta's package), written
atomically; beside it ``<out>.state.pt`` holds what resuming needs (step,
model and optimizer state, settings) as tensors and plain types only.
Data order and prompt sampling are seeded by (seed, step), so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.progress import Progress, ProgressGenerator, run_blocking
from ..errors import TrainingError
from .datasets import as_pair_source, augment_pair, check_pair, prepare_pair
from .losses import iou_prediction_loss, mask_iou, mask_loss
from .prompt_sampling import correction_points, noisy_boxes, sample_points
from .run_state import STATE_SUFFIX, atomic_save, check_output, load_training_state, plain_state_dict, state_path

@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (all plain types, saved with the training state)."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps in all (overrides epochs when smaller)
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * min_lr_ratio
    images_per_step: int = 1
    objects_per_image: int = 8
    n_interactions: int = 8  # decoder rounds per object: the first prompt + (n - 1) corrections
    point_probability: float = 0.5
    box_noise: float = 0.1
    min_object_pixels: int = 4  # objects smaller than this in the model's input frame are not used
    decoder_only: bool = False
    augment: bool = True
    grad_clip: float = 1.0
    checkpoint_every: int = 100  # steps
    checkpoint_minutes: float = 5.0  # also save when this much time passed since the last save
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast (CPU with AMX, recent GPUs)
    instance_weight: float = 1.0  # weight of the instance decoder's loss (used when the model has a decoder)
    instance_lr: float | None = None  # the instance decoder's peak learning rate (None: learning_rate)


@dataclass
class TrainResult:
    """What a run did: steps done, per-step losses, and where the weights are."""

    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    checkpoint: str | None = None
    completed: bool = False


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def _bf16_fallback(device: torch.device) -> bool:
    """True (after a warning naming fp32) where bf16 autocast would not run natively on ``device``.

    On a CPU without AVX512-BF16/AMX, bf16 is emulated: a training step of the tiny
    model took 26 s instead of 2.4 s in fp32 on an AVX2-only CPU. fp16 autocast (what a
    GPU without bf16 offers) would need loss scaling, so fp32 is used there too.
    """
    from ..engine.models.device import resolve_precision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        usable = resolve_precision("bf16", device) == "bf16"
    if not usable:
        warnings.warn(f"bf16 training is not supported natively on {device.type} here; training in fp32 instead.",
                      UserWarning, stacklevel=3)
    return not usable


def _trainable(model, decoder_only: bool) -> list[torch.nn.Parameter]:
    model.image_encoder.requires_grad_(not decoder_only)
    return [p for p in model.parameters() if p.requires_grad]


def _param_groups(model, params: list[torch.nn.Parameter], cfg: TrainConfig) -> list[dict]:
    """One optimizer group, or two when the instance decoder has its own peak rate (``lr_scale`` x the schedule)."""
    decoder = getattr(model, "instance_decoder", None)
    if decoder is None or cfg.instance_lr is None:
        return [{"params": params}]
    own = {id(p) for p in decoder.parameters()}
    return [{"params": [p for p in params if id(p) not in own], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in own], "lr_scale": cfg.instance_lr / cfg.learning_rate}]


def _batch_indices(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """Indices of the pairs used at ``step``: consecutive slices of a per-epoch seeded permutation."""
    out = []
    for j in range(per_step):
        flat = step * per_step + j
        epoch, pos = divmod(flat, n)
        perm = np.random.default_rng([seed, 7919, epoch]).permutation(n)
        out.append(int(perm[pos]))
    return out


def _load_sample(pairs, idx: int, img_size: int, augment: bool, rng: np.random.Generator):
    image, labels = pairs[idx]
    image, labels = check_pair(image, labels, f"pair {idx}")
    if augment:
        image, labels = augment_pair(image, labels, rng)
    rgb, lab = prepare_pair(image, labels, img_size)
    return rgb, lab


def _objects(lab: np.ndarray, k: int, min_pixels: int, img_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Up to ``k`` random objects of (h, w) labels as (k', S, S) bool masks in the padded input frame."""
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    ids = ids[counts >= min_pixels]
    if ids.size == 0:
        return torch.zeros((0, img_size, img_size), dtype=torch.bool)
    chosen = rng.choice(ids, size=min(k, ids.size), replace=False)
    padded = np.zeros((img_size, img_size), lab.dtype)
    padded[: lab.shape[0], : lab.shape[1]] = lab
    return torch.from_numpy(padded[None] == chosen[:, None, None])


def _decode(model, emb, gt, points, labels, boxes, mask_in, multimask: bool):
    """One decoder round for a group of prompts; returns (logits (K, M, S, S), low-res (K, M, s, s), iou (K, M))."""
    sparse, dense = model.prompt_encoder(
        points=(points, labels) if points is not None else None, boxes=boxes, masks=mask_in
    )
    low, iou = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
    sl = slice(1, None) if multimask else slice(0, 1)
    low, iou = low[:, sl].float(), iou[:, sl].float()
    logits = F.interpolate(low, gt.shape[-2:], mode="bilinear", align_corners=False)
    return logits, low, iou


def interactive_loss(
    model, embeddings: torch.Tensor, gt: torch.Tensor, is_point: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """The mean loss over ``cfg.n_interactions`` simulated interaction rounds.

    Args:
        embeddings: (K, C, h, w) image embedding of each object's image.
        gt: (K, S, S) bool object masks in the padded input frame, on the CPU (prompts are
            sampled there with ``gen``; only the results move to the model's device).
        is_point: (K,) bool, True where the first prompt is a single point (else a box).
    """
    device = embeddings.device
    total = embeddings.new_zeros((), dtype=torch.float32)
    n_terms = 0
    groups = [g for g in (is_point, ~is_point) if g.any()]
    for g in groups:
        idx = torch.nonzero(g)[:, 0]
        target = gt[idx]
        emb = embeddings[idx.to(device)]
        tgt = target[:, None].float().to(device)
        point_group = bool(is_point[idx[0]])
        if point_group:
            points = sample_points(target, gen)[:, None].to(device)
            labels, boxes = torch.ones(len(idx), 1, dtype=torch.int, device=device), None
        else:
            boxes = noisy_boxes(target, cfg.box_noise, generator=gen).to(device)
            points = labels = None
        mask_in = None
        for r in range(max(1, cfg.n_interactions)):
            multimask = point_group and r == 0
            logits, low, iou = _decode(model, emb, target, points, labels, boxes, mask_in, multimask)
            per_mask = mask_loss(logits, tgt)  # (K, M)
            best = per_mask.argmin(dim=1)
            rows = torch.arange(len(idx), device=device)
            actual = mask_iou(logits, tgt)
            total = total + per_mask[rows, best].mean() + iou_prediction_loss(iou, actual)
            n_terms += 1
            if r + 1 == cfg.n_interactions:
                break
            chosen = logits[rows, best].detach()
            mask_in = low[rows, best][:, None].detach()
            new_pts, new_labels = correction_points((chosen > 0).cpu(), target, gen)
            new_pts, new_labels = new_pts.to(device), new_labels.to(device)
            if points is None:
                points, labels = new_pts[:, None], new_labels[:, None]
            else:
                points = torch.cat([points, new_pts[:, None]], dim=1)
                labels = torch.cat([labels, new_labels[:, None]], dim=1)
    return total / max(1, n_terms)


def training_step_loss(model, samples, cfg: TrainConfig, step: int, device) -> torch.Tensor | None:
    """Loss of one step on ``samples`` (list of (rgb (h, w, 3) uint8, labels (h, w))); None if no object."""
    rng = np.random.default_rng([cfg.seed, 31, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    img_size = model.image_encoder.img_size
    images, gts, owners, labs = [], [], [], []
    for i, (rgb, lab) in enumerate(samples):
        masks = _objects(lab, cfg.objects_per_image, cfg.min_object_pixels, img_size, rng)
        if masks.shape[0] == 0:
            continue
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()
        images.append(model.preprocess(x.to(device)))
        gts.append(masks)
        labs.append(lab)
        owners += [len(images) - 1] * masks.shape[0]
    if not images:
        return None
    joint = cfg.instance_weight > 0 and getattr(model, "instance_decoder", None) is not None
    x = torch.stack(images)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if cfg.bf16 else torch.autocast(x.device.type, enabled=False)
    with ctx:
        if cfg.decoder_only:
            with torch.no_grad():
                emb = model.image_encoder(x)
        else:
            emb = model.image_encoder(x)
        gt = torch.cat(gts)  # stays on the CPU for prompt sampling
        per_object = emb[torch.as_tensor(owners, device=emb.device)]
        is_point = torch.rand(gt.shape[0], generator=gen) < cfg.point_probability
        loss = interactive_loss(model, per_object, gt, is_point, cfg, gen)
        if joint:
            from .instance_loss import instance_step_loss

            loss = loss + cfg.instance_weight * instance_step_loss(model.instance_decoder, emb, labs, img_size)
        return loss


def fine_tune(
    model,
    pairs: Sequence,
    out: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> ProgressGenerator[TrainResult]:
    """Fine-tune ``model`` (a napari_sam ``Sam``) on ``pairs``; yields Progress, returns TrainResult.

    Args:
        pairs: indexable of (image, labels); see :mod:`napari_sam.training.datasets`.
        out: checkpoint file written every ``checkpoint_every`` steps and at the end.
        resume: continue from ``<out>.state.pt`` if it exists (else start afresh).
        overwrite: allow replacing an existing ``out`` when not resuming.
    """
    cfg = config
    pairs = as_pair_source(pairs)
    out = Path(out)
    check_output(out, resume, overwrite)
    if cfg.n_interactions < 1 or cfg.objects_per_image < 1 or cfg.images_per_step < 1:
        raise TrainingError("n_interactions, objects_per_image and images_per_step must be at least 1.")
    device = torch.device(device) if device is not None else model.device
    if cfg.bf16 and _bf16_fallback(device):
        cfg = replace(cfg, bf16=False)
    model.to(device)
    params = _trainable(model, cfg.decoder_only)
    optimizer = torch.optim.AdamW(_param_groups(model, params, cfg), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / cfg.images_per_step)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    start, losses = 0, []
    sp = state_path(out)
    if resume and sp.exists():
        start, losses = load_training_state(sp, model, optimizer, cfg)
    model.train()
    if cfg.decoder_only:
        model.image_encoder.eval()

    def save(step: int) -> None:
        atomic_save(plain_state_dict(model), out)
        atomic_save(
            {"step": step, "model": plain_state_dict(model), "optimizer": optimizer.state_dict(),
             "losses": list(losses), "config": asdict(cfg), "total_steps": total},
            sp,
        )

    img_size = model.image_encoder.img_size
    last_save = time.monotonic()
    done = start
    yield Progress(start, total, "starting")
    try:
        for step in range(start, total):
            lr = _lr_at(step, total, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            rng = np.random.default_rng([cfg.seed, 17, step])
            idxs = _batch_indices(step, len(pairs), cfg.images_per_step, cfg.seed)
            samples = [_load_sample(pairs, i, img_size, cfg.augment, rng) for i in idxs]
            loss = training_step_loss(model, samples, cfg, step, device)
            if loss is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
            else:
                losses.append(float("nan"))
            done = step + 1
            if done % cfg.checkpoint_every == 0 or time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                save(done)
                last_save = time.monotonic()
            yield Progress(done, total, f"loss {losses[-1]:.4f} lr {lr:.2e}")
        if start < total or not out.exists():
            save(total)
    except GeneratorExit:  # cancelled between steps: keep what was learnt so far
        if done > start:
            save(done)
        raise
    finally:
        model.eval()
        model.image_encoder.requires_grad_(True)
    return TrainResult(total, total, losses, str(out), completed=True)


def fine_tune_blocking(model, pairs, out, config: TrainConfig = TrainConfig(), callback=None,
                       show_progress: bool = False, **kwargs) -> TrainResult | None:
    """Run :func:`fine_tune` to the end (``callback`` returning False cancels; the last checkpoint stays)."""
    return run_blocking(fine_tune(model, pairs, out, config, **kwargs), callback, show_progress, "training")
