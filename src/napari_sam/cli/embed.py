"""``napari-sam embed``: precompute the embeddings of an image or stack into a disk cache.

A later ``Segmenter(model=..., cache_dir=DIR)`` (or the napari widget with the
same cache folder) on the same data, model, precision and tiling finds them
and skips the encoder. Interrupted runs resume: finished slices/tiles are kept.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed",
        help="precompute image embeddings of a (large) image or stack into a cache folder",
        description=(
            "Precompute SAM embeddings of every 2D slice (and tile) of INPUT into the zarr cache DIR. "
            "INPUT is a TIFF/OME-TIFF file, a zarr/OME-Zarr folder, or a .npy file; it is read slice by "
            "slice and tile by tile, never whole."
        ),
    )
    p.add_argument("input", help="TIFF/OME-TIFF, zarr/OME-Zarr folder, or .npy")
    p.add_argument("--cache", required=True, metavar="DIR", help="embedding cache folder (created if missing)")
    p.add_argument("--model", default=None,
                   help="zoo name or checkpoint path (default: $NAPARI_SAM_MODEL, else vit_b_lm, vit_t_lm or "
                        "vit_l_lm when already downloaded with its decoder, else the bundled tiny)")
    p.add_argument("--tile", nargs=2, type=int, metavar=("ROWS", "COLS"), default=None,
                   help="tile shape (default: the model's input size, e.g. 1024 1024 for vit_b)")
    p.add_argument("--halo", nargs=2, type=int, metavar=("ROWS", "COLS"), default=None,
                   help="overlap context around each tile (default: one eighth of the tile)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                   help="encoder precision (default: $NAPARI_SAM_PRECISION, else the best for the device; "
                        "int8: CPU only, faster, not exact)")
    p.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                   help="the last axis holds colour channels (default: guessed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .channel_options import add_channel_options

    add_channel_options(p)
    return p


def open_input(path: str, with_axes: bool = False):
    """A lazy array for ``path`` (:func:`napari_sam.engine.images.io.open_image`; .npy memory-mapped);
    with ``with_axes``, ``(array, axis letters from the file's metadata or None)``."""
    from ..engine.images.io import open_image

    img = open_image(path)
    return (img.data, img.axes) if with_axes else img.data


def run(args: argparse.Namespace) -> int:
    import sys

    from ..engine.models.zoo import check_model
    from ..engine.prediction.segmenter import Segmenter
    from ..engine.progress import run_blocking
    from ..engine.store.output_paths import refuse_overlap

    refuse_overlap([args.cache], [args.input])  # the cache must not be written into (or around) the input
    data, axes = open_input(args.input, with_axes=True)
    check_model(args.model)
    seg = Segmenter(
        model=args.model,
        device=args.device,
        precision=args.precision,
        rgb=args.rgb,
        tile_shape=tuple(args.tile) if args.tile else None,
        halo=tuple(args.halo) if args.halo else None,
        cache_dir=args.cache,
    )
    seg.store.on_error = "raise"  # the cache is the point of this command: fail loudly
    seg.set_image(data, axes=args.axes or axes, channel=args.channel)
    computed = run_blocking(seg.precompute(), show_progress=not args.quiet, description="embedding")
    info = seg.cache_info()
    grid = seg.tile_grid
    print(
        f"{info['disk_entries']} embeddings cached in {info['group']} "
        f"({seg.n_slices} slice(s) x {len(grid)} tile(s) of {grid.tile_shape[0]}x{grid.tile_shape[1]}, "
        f"halo {grid.halo[0]}x{grid.halo[1]}; {computed} computed now)",
        file=sys.stdout,
    )
    return 0
