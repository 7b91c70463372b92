"""``napari-sam sample``: write a generated sample image (and its true labels) to TIFF."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="write a synthetic fluorescence sample (image + true labels) as TIFF")
    p.add_argument("kind", choices=["cells", "stack"], help="2D nuclei image or 3D nuclei stack")
    p.add_argument("--out", required=True, help="output image TIFF; labels go to <out stem>_labels.tif")
    p.add_argument("--seed", type=int, default=0, help="random seed of the drawn nuclei")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import tifffile

    from ..engine.store.atomic import atomic_write
    from ..engine.store.output_paths import check_output
    from ..errors import InvalidOutputError, OutputExistsError
    from ..samples import synthetic_cells, synthetic_stack

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InvalidOutputError(f"Cannot write the sample to {out}: it is written as TIFF; use a .tif or .tiff name.")
    labels_out = out.with_name(out.stem + "_labels" + out.suffix)
    for p in (out, labels_out):
        check_output(p)
        if p.exists() and not args.overwrite:
            raise OutputExistsError(f"Output {p} exists; pass --overwrite to replace it.")
    image, labels = (synthetic_cells if args.kind == "cells" else synthetic_stack)(seed=args.seed)
    atomic_write(out, lambda tmp: tifffile.imwrite(tmp, image))
    atomic_write(labels_out, lambda tmp: tifffile.imwrite(tmp, labels))
    print(f"{out} {image.shape} {image.dtype}; true labels: {labels_out} ({int(labels.max())} objects)")
    return 0
