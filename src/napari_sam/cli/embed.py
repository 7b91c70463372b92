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
    p.add_argument("--model", default=None, help="zoo name or checkpoint path (default: the default model)")
    p.add_argument("--tile", nargs=2, type=int, metavar=("ROWS", "COLS"), default=None,
                   help="tile shape (default: the model's input size, e.g. 1024 1024 for vit_b)")
    p.add_argument("--halo", nargs=2, type=int, metavar=("ROWS", "COLS"), default=None,
                   help="overlap context around each tile (default: one eighth of the tile)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"])
    p.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                   help="the last axis holds colour channels (default: guessed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def open_input(path: str):
    """A lazy array for ``path``: TIFF/zarr via :mod:`napari_sam.engine.images.io`, .npy memory-mapped."""
    from pathlib import Path

    import numpy as np

    from ..engine.images.io import open_image
    from ..errors import InvalidImageError

    p = Path(path).expanduser()
    if p.suffix.lower() == ".npy":
        if not p.is_file():
            raise InvalidImageError(f"Image file not found: {p}")
        try:
            return np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
            raise InvalidImageError(f"Could not read {p}: {type(e).__name__}: {e}") from e
    return open_image(p).data


def run(args: argparse.Namespace) -> int:
    import sys

    from ..engine.progress import run_blocking
    from ..engine.prediction.segmenter import Segmenter

    data = open_input(args.input)
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
    seg.set_image(data)
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
