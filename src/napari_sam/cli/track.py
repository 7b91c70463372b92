"""``napari-sam track``: follow objects through a time-lapse or z-stack with SAM 2.1 memory.

The objects drawn in a seed label image are tracked forward and backward through every
frame, each keeping its id; each frame is written as soon as it is done, and an
interrupted run resumes when started again with the same arguments (see
:mod:`napari_sam.engine.batch.track_run`).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "track",
        help="track objects through a time-lapse (T, Y, X) or z-stack with SAM 2.1 memory",
        description=(
            "Track the objects of a seed label image through every frame of a time-lapse (T, Y, X) or z-stack "
            "(Z, Y, X) with SAM 2.1 memory; each object keeps its label id on every frame. Output: .tif/.tiff or "
            ".zarr (a group with 'labels'). Re-running the same command after an interruption resumes it; an "
            "existing finished output is refused unless --overwrite. The input and the seeds are only read."
        ),
    )
    p.add_argument("input", help="input sequence: .tif/.tiff file or .zarr array/group")
    p.add_argument("--seeds", required=True,
                   help="seed labels (.tif/.tiff/.zarr/.npy): a (Y, X) label image of --seed-frame, or a (T, Y, X) "
                        "label image with objects drawn on any frames")
    p.add_argument("--out", required=True, help="output labels: .tif/.tiff or .zarr")
    p.add_argument("--seed-frame", type=int, default=0, help="the frame a 2-D seed label image belongs to")
    p.add_argument("--model", default=None,
                   help="SAM 2.1 zoo name or checkpoint path (default: sam2.1_hiera_tiny)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .channel_options import add_channel_options

    add_channel_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from ..engine.batch.track_run import track_sequence
    from ..engine.progress import run_blocking
    from ..errors import BatchWriteError

    try:
        gen = track_sequence(args.input, args.out, args.seeds, model=args.model, axes=args.axes,
                             channel=args.channel, seed_frame=args.seed_frame, overwrite=args.overwrite,
                             device=args.device)
        result = run_blocking(gen, show_progress=not args.quiet, description="napari-sam track")
    except BatchWriteError as e:
        print(f"napari-sam: error: {e}", file=sys.stderr)
        return 3
    resumed = f" ({result.resumed_frames} frames kept from an earlier run)" if result.resumed_frames else ""
    print(f"{result.n_objects} objects tracked through {result.n_frames} frames -> {result.path}{resumed}")
    return 0
