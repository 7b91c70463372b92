"""Which (input, seeds, output) jobs a ``napari-sam track`` command line names.

Three forms, checked here before anything runs:

- one ``--seeds`` and one ``--out`` per input, in the same order;
- ``--seeds-dir DIR``: each input's seeds are the file or zarr in DIR with the input's name
  (any suffix napari-sam reads, e.g. ``pos01.tif`` -> ``DIR/pos01.tif`` or ``DIR/pos01.zarr``);
  ``--out-dir DIR``: each output is ``DIR/<name>.zarr`` (or ``.tif`` with ``--out-format tif``);
- ``--manifest FILE.csv``: one row per sequence with the columns ``input,seeds,out`` (and an
  optional ``seed_frame``); relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..engine.batch.track_many import TrackJob
from ..errors import InvalidParameterError, InvalidPromptError


def base_name(path: str | Path) -> str:
    """``pos01.ome.tif`` -> ``pos01``; ``movie.zarr`` -> ``movie``."""
    name = Path(path).name
    for ome in (".ome.tif", ".ome.tiff", ".ome.zarr"):
        if name.lower().endswith(ome):
            return name[: -len(ome)]
    return Path(name).stem


def find_seeds(input: str, folder: Path) -> str:
    """The one seed image in ``folder`` named like ``input``; a clear error if none or several."""
    from ..engine.images.io import INPUT_SUFFIXES

    base = base_name(input)
    found = sorted(p for p in folder.glob(f"{base}.*")
                   if base_name(p) == base and p.suffix.lower() in INPUT_SUFFIXES)
    if not found:
        raise InvalidPromptError(f"No seeds for {input} in {folder}: expected {folder / base}.tif (or .tiff, "
                                 ".zarr, .npy), a label image of the same name as the input.")
    if len(found) > 1:
        raise InvalidPromptError(f"Several seed images for {input} in {folder}: {', '.join(p.name for p in found)}; "
                                 "keep one.")
    return str(found[0])


def _count(what: str, given: list[str], inputs: list[str]) -> None:
    if len(given) != len(inputs):
        raise InvalidParameterError(
            f"{len(inputs)} inputs but {len(given)} {what}: give {what} once per input, in the same order "
            f"(or use {what}-dir).")


def read_manifest(path: str) -> list[TrackJob]:
    """The jobs of a CSV manifest (columns ``input,seeds,out``, optional ``seed_frame``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidParameterError(f"The manifest {p} does not exist.")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"input", "seeds", "out"} - set(rows[0] if rows else ())
    if not rows or missing:
        raise InvalidParameterError(f"The manifest {p} needs a header row with the columns input,seeds,out "
                                    f"(optional: seed_frame) and one row per sequence"
                                    + (f"; missing: {', '.join(sorted(missing))}." if rows else "."))
    jobs = []
    for n, row in enumerate(rows, start=2):
        if not all((row.get(k) or "").strip() for k in ("input", "seeds", "out")):
            raise InvalidParameterError(f"{p}, line {n}: input, seeds and out must all be given.")
        try:
            frame = int(row.get("seed_frame") or 0)
        except ValueError:
            raise InvalidParameterError(f"{p}, line {n}: seed_frame must be a whole number; "
                                        f"got {row['seed_frame']!r}.") from None
        paths = [str(p.parent / Path(row[k].strip()).expanduser()) for k in ("input", "seeds", "out")]
        jobs.append(TrackJob(*paths, seed_frame=frame))
    return jobs


def jobs_from_args(args: argparse.Namespace) -> list[TrackJob]:
    """The jobs named by the command line (see the module docstring); refuses what does not add up."""
    seeds, outs = args.seeds or [], args.out or []
    if args.manifest:
        if args.input or seeds or outs or args.seeds_dir or args.out_dir:
            raise InvalidParameterError("--manifest names every input, seeds and output; give no inputs, "
                                        "--seeds, --out, --seeds-dir or --out-dir with it.")
        return read_manifest(args.manifest)
    inputs = list(args.input)
    if not inputs:
        raise InvalidParameterError("No input: give one or more sequences (or --manifest FILE.csv).")
    if seeds and args.seeds_dir:
        raise InvalidParameterError("Give --seeds or --seeds-dir, not both.")
    if outs and args.out_dir:
        raise InvalidParameterError("Give --out or --out-dir, not both.")
    if not seeds and not args.seeds_dir:
        raise InvalidParameterError("No seeds: give --seeds LABELS (once per input) or --seeds-dir DIR.")
    if not outs and not args.out_dir:
        raise InvalidParameterError("No output: give --out OUT (once per input) or --out-dir DIR.")
    if args.seeds_dir:
        folder = Path(args.seeds_dir).expanduser()
        if not folder.is_dir():
            raise InvalidParameterError(f"--seeds-dir {folder} is not a folder.")
        seeds = [find_seeds(i, folder) for i in inputs]
    else:
        _count("--seeds", seeds, inputs)
    if args.out_dir:
        folder = Path(args.out_dir).expanduser()
        if not folder.is_dir():
            raise InvalidParameterError(f"--out-dir {folder} is not a folder; create it first.")
        outs = [str(folder / f"{base_name(i)}.{args.out_format}") for i in inputs]
    else:
        _count("--out", outs, inputs)
    return [TrackJob(i, s, o, seed_frame=args.seed_frame) for i, s, o in zip(inputs, seeds, outs)]
