"""``napari-sam train``: fine-tune a SAM on folders of images and instance labels.

    napari-sam train --images imgs/ --labels labels/ --out my_model.pt [--model tiny|vit_b|PATH]
                     [--decoder-only] [--epochs 10] [--resume] [--overwrite]

Load the result with ``napari-sam predict --model my_model.pt`` or
``build_sam("vit_b", checkpoint="my_model.pt")``.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on image + instance-label pairs",
        description="Fine-tune SAM on your own labels (folders of images and label images matched by file name).",
    )
    p.add_argument("--images", required=True, help="folder of images (.tif/.tiff, .png, .jpg/.jpeg)")
    p.add_argument("--labels", required=True,
                   help="folder of instance labels (.tif/.tiff or .png), same file names (or <name>_labels.tif)")
    p.add_argument("--out", required=True, help="output checkpoint file (.pt)")
    p.add_argument("--model", default="tiny", help="zoo name or checkpoint path to start from (default: tiny)")
    p.add_argument("--model-type", default=None, help="architecture of a checkpoint path (detected if left out)")
    p.add_argument("--decoder-only", action="store_true", help="freeze the image encoder, train prompt encoder + decoder")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training pairs")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--objects", type=int, default=8, help="objects per image per step (default 8)")
    p.add_argument("--interactions", type=int, default=8, help="prompt rounds per object (default 8; fewer is faster)")
    p.add_argument("--images-per-step", type=int, default=1, help="training images per optimiser step")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="random seed (prompt sampling, shuffling)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--no-augment", action="store_true", help="no random flips / rotations")
    p.add_argument("--resume", action="store_true", help="continue the run that wrote --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..engine.models.device import resolve_device
    from ..engine.progress import run_blocking
    from ..engine.models.zoo import load_model
    from ..training.datasets import pairs_from_folders
    from ..training.trainer import TrainConfig, check_output, fine_tune

    from ..engine.models.zoo import check_model
    from ..engine.store.output_paths import check_output_folder

    out = Path(args.out)
    check_output_folder(out)
    check_output(out, args.resume, args.overwrite)  # fail before loading anything
    check_model(args.model)
    pairs = pairs_from_folders(args.images, args.labels)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device, model_type=args.model_type)
    cfg = TrainConfig(
        epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr, objects_per_image=args.objects,
        n_interactions=args.interactions, images_per_step=args.images_per_step,
        checkpoint_every=args.checkpoint_every, seed=args.seed, decoder_only=args.decoder_only,
        bf16=args.bf16, augment=not args.no_augment,
    )
    result = run_blocking(
        fine_tune(model, pairs, out, cfg, resume=args.resume, overwrite=args.overwrite, device=device),
        show_progress=True, description="training",
    )
    print(f"wrote {out} ({result.steps} steps)" if result else f"stopped; last checkpoint in {out}")
    return 0
