"""``napari-sam predict``: one object from point and box prompts, written as a mask TIFF.

Coordinates are napari's (row, col) pixel order.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="segment one object from clicks/box on an image file and write its mask",
        description="Segment one object in a 2D image (or one slice of a stack) from prompts in (row, col) order.",
    )
    p.add_argument("image", help="input image (TIFF, PNG, JPEG, or .npy)")
    p.add_argument("--out", required=True, help="output mask TIFF (uint8, 255 = object)")
    p.add_argument("--point", nargs=2, type=float, action="append", metavar=("ROW", "COL"), default=[],
                   help="a positive click (repeatable)")
    p.add_argument("--negative", nargs=2, type=float, action="append", metavar=("ROW", "COL"), default=[],
                   help="a negative click (repeatable)")
    p.add_argument("--box", nargs=4, type=float, metavar=("ROW0", "COL0", "ROW1", "COL1"))
    p.add_argument("--slice", type=int, default=None, help="slice index along the first axis of a stack")
    p.add_argument("--model", default=None, help="zoo name or checkpoint path (default: the bundled model)")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def read_image(path: str):
    """Read an image file into a numpy array (TIFF via tifffile, .npy, else scikit-image)."""
    from pathlib import Path

    import numpy as np

    from ..errors import InvalidImageError

    p = Path(path)
    if not p.is_file():
        raise InvalidImageError(f"Input image not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(p)
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        import skimage.io

        return skimage.io.imread(p)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise InvalidImageError(f"Could not read {p}: {type(e).__name__}: {e}") from e


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import tifffile

    from ..engine.store.atomic import atomic_write
    from ..engine.prediction.segmenter import Segmenter
    from ..errors import InvalidPromptError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InvalidPromptError(f"Output {out} exists; pass --overwrite to replace it.")
    if not args.point and not args.negative and args.box is None:
        raise InvalidPromptError("Give at least one --point or a --box.")
    image = read_image(args.image)
    seg = Segmenter(model=args.model, device=args.device, precision=args.precision)
    seg.set_image(image)
    points = list(args.point) + list(args.negative)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    mask = seg.segment(
        points=points or None, labels=labels or None, box=args.box, slice_index=args.slice
    )
    atomic_write(out, lambda tmp: tifffile.imwrite(tmp, (mask.astype(np.uint8) * 255)))
    print(f"{out}: {int(mask.sum())} pixels")
    return 0
