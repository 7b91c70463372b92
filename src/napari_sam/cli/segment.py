"""``napari-sam segment``: automatic 3D instance segmentation of a whole z-stack.

Every slice is segmented (the model's instance decoder when it has one, else SAM
automatic mask generation; ``--method``), written as soon as it is done, and the 2D instances are linked across z into 3D labels. An
interrupted run resumes when started again with the same arguments, and a finished output
of the same job is kept and reported (see :mod:`napari_sam.engine.batch.run`). A 2D image is
treated as a stack of one slice.
"""

from __future__ import annotations

import argparse

from ..engine.automatic.settings import BATCH_DEFAULTS as DEFAULTS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "segment",
        help="segment every object of a z-stack (TIFF or zarr) into 3D labels",
        description=(
            "Automatic instance segmentation of every slice of a (Z, H, W) stack, linked across z into 3D "
            "labels. Output: .tif/.tiff or .zarr (a group with 'labels'). Re-running the same command after an "
            "interruption resumes it, and keeps a finished output of the same job as it is; an existing output of "
            "another job or program is refused unless --overwrite."
        ),
    )
    p.add_argument("input", help="input stack: .tif/.tiff file or .zarr array/group; 2D = one slice")
    p.add_argument("--out", required=True, help="output labels: .tif/.tiff or .zarr")
    p.add_argument("--model", default=None,
                   help="zoo name or checkpoint path (default: $NAPARI_SAM_MODEL, else vit_b_lm, vit_t_lm or "
                        "vit_l_lm when already downloaded with its decoder, else the bundled tiny)")
    p.add_argument("--tile", nargs=2, type=int, metavar=("ROWS", "COLS"), default=None,
                   help="segment large slices in tiles of ROWS x COLS pixels")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                   help="encoder precision (default: $NAPARI_SAM_PRECISION, else the best for the device; "
                        "int8: CPU only, faster, not exact)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run slices on a Dask cluster (e.g. tcp://host:8786); the output must be on shared storage")
    p.add_argument("--method", choices=["auto", "ais", "amg"], default="auto",
                   help="ais: the model's trained instance decoder (fast; zoo models with a decoder, see "
                        "'napari-sam models'); amg: a grid of point prompts (any model); auto (default): ais when "
                        "the model has a decoder, else amg")
    p.add_argument("--points-per-side", type=int, default=DEFAULTS.points_per_side, metavar="N",
                   help=f"amg: prompt grid of the automatic segmentation (default: {DEFAULTS.points_per_side})")
    p.add_argument("--pred-iou-thresh", type=float, default=None, metavar="T",
                   help="amg: keep masks whose predicted IoU is above this (0 keeps all; default: the model's)")
    p.add_argument("--stability-score-thresh", type=float, default=None, metavar="T",
                   help="amg: keep masks at least this stable under a threshold shift (0 keeps all; "
                        "default: the model's)")
    p.add_argument("--center-distance-thresh", type=float, default=None, metavar="T",
                   help="ais: seeds need a centre distance below this (default: the model's)")
    p.add_argument("--boundary-distance-thresh", type=float, default=None, metavar="T",
                   help="ais: seeds need a boundary distance below this (default: the model's)")
    p.add_argument("--foreground-thresh", type=float, default=None, metavar="T",
                   help="ais: foreground needs a probability above this (default: the model's)")
    p.add_argument("--min-area", type=int, default=None, metavar="PIXELS",
                   help="leave out objects smaller than this (0 keeps everything); amg also cleans mask "
                        f"islands/holes smaller than this (default: the model's; {DEFAULTS.min_mask_region_area} "
                        "for amg)")
    p.add_argument("--link-iou", type=float, default=0.3,
                   help="minimum IoU with the previous slice for an instance to continue a 3D object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .channel_options import add_channel_options

    add_channel_options(p)
    return p


def _noted(gen, note: str | None):
    """``gen``, with ``note`` printed (stderr) at its first step: once its checks have passed, so a
    refused run says only why it was refused."""
    import sys

    try:
        first = next(gen)
    except StopIteration as stop:
        return stop.value
    if note:
        print(f"napari-sam: {note}", file=sys.stderr)
    yield first
    return (yield from gen)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..engine.automatic.settings import AutoSettings
    from ..engine.batch.run import segment_stack
    from ..engine.models.model_profile import tiny_note
    from ..engine.progress import run_blocking
    from ..errors import BatchWriteError, InvalidPromptError

    settings = AutoSettings(  # checks every value (InvalidParameterError / InvalidImageError: exit code 2)
        method=None if args.method == "auto" else args.method,
        points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        min_mask_region_area=DEFAULTS.min_mask_region_area if args.min_area is None else args.min_area,
        center_distance_threshold=args.center_distance_thresh,
        boundary_distance_threshold=args.boundary_distance_thresh,
        foreground_threshold=args.foreground_thresh, min_size=args.min_area,
        tile_shape=None if args.tile is None else tuple(args.tile),
    )
    note = tiny_note(args.model)
    if not 0 < args.link_iou <= 1:
        raise InvalidPromptError(f"--link-iou must be in (0, 1]; got {args.link_iou}.")
    client = None
    if args.scheduler:
        from ..engine.batch.distributed import connect

        client = connect(args.scheduler)
    try:
        gen = segment_stack(
            args.input, args.out, model=args.model, device=args.device, precision=args.precision,
            overwrite=args.overwrite, client=client, settings=settings, iou_threshold=args.link_iou,
            axes=args.axes, channel=args.channel, keep_finished=not args.overwrite,
        )
        result = run_blocking(_noted(gen, note), show_progress=not args.quiet, description="napari-sam segment")
    except BatchWriteError as e:
        print(f"napari-sam: error: {e}", file=sys.stderr)
        return 3
    finally:
        if client is not None:
            client.close()
    resumed = f" ({result.resumed_slices} slices kept from an earlier run)" if result.resumed_slices else ""
    if result.kept:
        resumed = " (finished by an earlier run, kept)"
    print(f"{result.n_objects} objects in {result.n_slices} slices -> {result.path}{resumed}")
    return 0
