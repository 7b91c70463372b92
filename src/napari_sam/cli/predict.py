"""``napari-sam predict``: one object from point and box prompts, written as a mask image.

Coordinates are napari's (row, col) pixel order. The mask is written in the
format its suffix names (see :data:`MASK_FORMATS`).
"""

from __future__ import annotations

import argparse

#: output suffix -> what is written there (uint8, 255 = object, 0 = background)
MASK_FORMATS = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".npy": "NumPy array"}


def slice_index(text: str) -> tuple[int, ...]:
    """``"3"`` -> (3,), ``"3,5"`` -> (3, 5): the index of one 2D slice along the leading axes."""
    try:
        key = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one integer per slice axis, separated by commas (e.g. 3 or 3,5); got {text!r}"
        ) from None
    if any(k < 0 for k in key):
        raise argparse.ArgumentTypeError(f"slice indices count from 0; got {text!r}")
    return key


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="segment one object from clicks/box on an image file and write its mask",
        description="Segment one object in a 2D image (or one slice of a stack) from prompts in (row, col) order.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("image", help="input image: TIFF/OME-TIFF, zarr, PNG, JPEG or .npy")
    p.add_argument("--out", required=True,
                   help=f"output mask (uint8, 255 = object); the suffix names the format: {', '.join(MASK_FORMATS)}")
    p.add_argument("--point", nargs=2, type=float, action="append", metavar=("ROW", "COL"), default=[],
                   help="a positive click (repeatable)")
    p.add_argument("--negative", nargs=2, type=float, action="append", metavar=("ROW", "COL"), default=[],
                   help="a negative click (repeatable)")
    p.add_argument("--box", nargs=4, type=float, metavar=("ROW0", "COL0", "ROW1", "COL1"), help="a box prompt")
    p.add_argument("--slice", type=slice_index, default=None, metavar="I[,J...]",
                   help="which 2D slice of a stack: one index per leading axis, e.g. 3 for (Z, Y, X) or "
                        "3,5 for (T, Z, Y, X)")
    p.add_argument("--model", default=None,
                   help="zoo name or checkpoint path (default: $NAPARI_SAM_MODEL, else vit_b_lm, vit_t_lm or "
                        "vit_l_lm when already downloaded with its decoder, else the bundled tiny)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                   help="compute precision (default: the device's default; int8: CPU only, faster, not exact)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    from .channel_options import add_channel_options

    add_channel_options(p)
    return p


def check_mask_output(out, image_path: str, overwrite: bool):
    """Refuse, before any work, an output whose format is unknown, whose folder is missing,
    that overlaps the input, or that exists (without ``overwrite``)."""
    from pathlib import Path

    from ..engine.store.output_paths import check_output
    from ..errors import InvalidOutputError, OutputExistsError

    out = Path(out).expanduser()
    if out.suffix.lower() not in MASK_FORMATS:
        hint = " (JPEG is lossy and would blur the mask's edges)" if out.suffix.lower() in (".jpg", ".jpeg") else ""
        raise InvalidOutputError(
            f"Cannot write a mask to {out}: unknown output format {out.suffix or '(no suffix)'!r}{hint}. "
            f"Use one of: {', '.join(MASK_FORMATS)}."
        )
    check_output(out, [image_path])
    if out.exists() and not overwrite:
        raise OutputExistsError(f"Output {out} exists; pass --overwrite to replace it.")
    return out


def write_mask(out, mask) -> None:
    """Write a bool (H, W) mask as uint8 0/255 in the format of ``out``'s suffix, atomically."""
    import numpy as np

    from ..engine.store.atomic import atomic_write

    data = np.asarray(mask).astype(np.uint8) * 255
    fmt = MASK_FORMATS[out.suffix.lower()]
    if fmt == "TIFF":
        import tifffile

        atomic_write(out, lambda tmp: tifffile.imwrite(tmp, data, photometric="minisblack"))
    elif fmt == "PNG":
        from PIL import Image

        atomic_write(out, lambda tmp: Image.fromarray(data).save(tmp, format="PNG"))
    else:
        def save(tmp):
            with open(tmp, "wb") as f:
                np.save(f, data, allow_pickle=False)

        atomic_write(out, save)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..engine.images.io import open_image
    from ..engine.models.model_profile import tiny_note
    from ..engine.models.zoo import check_model
    from ..engine.prediction.segmenter import Segmenter
    from ..errors import InvalidPromptError

    out = check_mask_output(args.out, args.image, args.overwrite)
    if not args.point and not args.negative and args.box is None:
        raise InvalidPromptError("Give at least one --point or a --box.")
    opened = open_image(args.image)
    image = opened.data
    axes = args.axes or opened.axes  # the file's own axis meaning (OME / tifffile series) unless given
    check_model(args.model)
    seg = Segmenter(model=args.model, device=args.device, precision=args.precision)
    seg.set_image(image, axes=axes, channel=args.channel)
    points = list(args.point) + list(args.negative)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    mask = seg.segment(
        points=points or None, labels=labels or None, box=args.box, slice_index=args.slice
    )
    write_mask(out, mask)
    print(f"{out}: {int(mask.sum())} pixels")
    note = tiny_note(args.model)  # after the checks and the write, as `segment` does: a refusal stays one line
    if note:
        print(f"napari-sam: {note}", file=sys.stderr)
    return 0
