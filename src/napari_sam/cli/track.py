"""``napari-sam track``: follow objects through time-lapses or z-stacks with SAM 2.1 memory.

The objects drawn in a seed label image are tracked forward and backward through every
frame, each keeping its id; each frame is written as soon as it is done, and an
interrupted run resumes when started again with the same arguments, and a finished output
of the same job is kept and reported (see
:mod:`napari_sam.engine.batch.track_run`). Several sequences are tracked one after another,
or one Dask task each with ``--scheduler`` (see :mod:`napari_sam.engine.batch.track_many`;
how they are named: :mod:`napari_sam.cli.track_jobs`).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "track",
        help="track objects through time-lapses (T, Y, X) or z-stacks with SAM 2.1 memory",
        description=(
            "Track the objects of a seed label image through every frame of a time-lapse (T, Y, X) or z-stack "
            "(Z, Y, X) with SAM 2.1 memory; each object keeps its label id on every frame. Output: .tif/.tiff or "
            ".zarr (a group with 'labels'). Re-running the same command after an interruption resumes it, and "
            "keeps a finished output (.zarr or TIFF) of the same job as it is; an existing output of another job "
            "or program is refused unless --overwrite. Several sequences: give several inputs with --seeds "
            "and --out once each (same order), or --seeds-dir/--out-dir, or --manifest; --scheduler runs one "
            "Dask task per sequence. The inputs and the seeds are only read."
        ),
    )
    p.add_argument("input", nargs="*", help="input sequences: .tif/.tiff files or .zarr arrays/groups")
    p.add_argument("--seeds", action="append", default=None, metavar="LABELS",
                   help="seed labels (.tif/.tiff/.zarr/.npy), once per input: a (Y, X) label image of --seed-frame, "
                        "or a (T, Y, X) label image with objects drawn on any frames")
    p.add_argument("--out", action="append", default=None, metavar="OUT",
                   help="output labels (.tif/.tiff or .zarr), once per input")
    p.add_argument("--seeds-dir", default=None, metavar="DIR",
                   help="folder of seed images named like the inputs (pos01.tif -> DIR/pos01.tif or .zarr, .npy)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="folder for the outputs, named like the inputs (pos01.tif -> DIR/pos01.zarr)")
    p.add_argument("--out-format", choices=["zarr", "tif"], default="zarr",
                   help="the outputs' format with --out-dir (either keeps a record of its job, so a rerun "
                        "skips finished sequences)")
    p.add_argument("--manifest", default=None, metavar="FILE.csv",
                   help="a CSV file with the columns input,seeds,out (optional: seed_frame), one row per sequence; "
                        "relative paths are relative to its folder")
    p.add_argument("--seed-frame", type=int, default=0, help="the frame a 2-D seed label image belongs to")
    p.add_argument("--model", default=None,
                   help="SAM 2.1 zoo name or checkpoint path (default: sam2.1_hiera_tiny)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="track each sequence as one task on a Dask cluster (e.g. tcp://host:8786); inputs and "
                        "outputs must be on storage every worker reaches")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .channel_options import add_channel_options

    add_channel_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from .track_jobs import jobs_from_args

    jobs = jobs_from_args(args)
    if len(jobs) == 1 and args.seeds and args.out and not args.scheduler:
        return _run_one(args, jobs[0])
    return _run_many(args, jobs)


def _run_one(args: argparse.Namespace, job) -> int:
    import sys

    from ..engine.batch.track_run import track_sequence
    from ..engine.progress import run_blocking
    from ..errors import BatchWriteError

    try:
        gen = track_sequence(job.input, job.output, job.seeds, model=args.model, axes=args.axes,
                             channel=args.channel, seed_frame=job.seed_frame, overwrite=args.overwrite,
                             device=args.device, keep_finished=not args.overwrite)
        result = run_blocking(gen, show_progress=not args.quiet, description="napari-sam track")
    except BatchWriteError as e:
        print(f"napari-sam: error: {e}", file=sys.stderr)
        return 3
    print(_line(result))
    return 0


def _line(result) -> str:
    resumed = f" ({result.resumed_frames} frames kept from an earlier run)" if result.resumed_frames else ""
    if result.kept:
        resumed = " (finished by an earlier run, kept)"
    return f"{result.n_objects} objects tracked through {result.n_frames} frames -> {result.path}{resumed}"


def _run_many(args: argparse.Namespace, jobs) -> int:
    import sys

    from ..engine.batch.track_many import track_sequences
    from ..engine.progress import run_blocking
    from ..errors import SequencesFailedError

    client = None
    if args.scheduler:
        from ..engine.batch.distributed import connect

        client = connect(args.scheduler)
    try:
        gen = track_sequences(jobs, model=args.model, axes=args.axes, channel=args.channel,
                              overwrite=args.overwrite, device=args.device, client=client)
        results = run_blocking(gen, show_progress=not args.quiet, description="napari-sam track")
    except SequencesFailedError as e:
        for r in e.finished:
            print(_line(r))
        for name, why in e.failed.items():
            print(f"napari-sam: error: {name}: {' '.join(why.split())}", file=sys.stderr)
        print(f"napari-sam: {len(e.failed)} of {len(jobs)} sequences failed; the others are finished. Run the same "
              "command again to resume the failed ones.", file=sys.stderr)
        return 3
    finally:
        if client is not None:
            client.close()
    for r in results:
        print(_line(r))
    return 0
