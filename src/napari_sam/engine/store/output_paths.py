"""Checks on output paths, made before anything is created or removed.

An output must never be, contain, or lie inside one of the inputs (a run with
``overwrite`` would otherwise delete or replace the data it is about to read),
and its folder must already exist (a missing folder is usually a typo; creating
it silently scatters results). Paths are compared after resolving symlinks,
``..`` and ``~``; two names of one existing file (hard links) count as the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ...errors import InvalidOutputError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def overlap(output: str | os.PathLike, input: str | os.PathLike) -> str | None:
    """How ``output`` overlaps ``input`` ("is", "lies inside", "contains"), or None if it does not."""
    out, inp = _resolved(output), _resolved(input)
    if out == inp or _same_file(out, inp):
        return "is"
    if inp in out.parents:
        return "lies inside"
    if out in inp.parents:
        return "contains"
    return None


def refuse_overlap(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`InvalidOutputError` if any output is, contains, or lies inside any input."""
    inputs = [i for i in inputs if i is not None]
    for o in outputs:
        for i in inputs:
            how = overlap(o, i)
            if how is not None:
                raise InvalidOutputError(
                    f"The output {o} {how} the input {i}; writing it would destroy the input. "
                    "Choose an output path outside the input."
                )


def check_output_folder(output: str | os.PathLike) -> Path:
    """The output's folder, which must exist and be a folder; :class:`InvalidOutputError` otherwise."""
    folder = Path(output).expanduser().absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InvalidOutputError(f"The folder of the output {output} ({folder}) {what}; create it first "
                                 "or choose another output path.")
    return folder


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                 also_writes: Iterable[str | os.PathLike] = ()) -> Path:
    """All checks on an output path (folder exists; neither it nor ``also_writes``, e.g. a
    side-car folder, overlaps an input). Returns the output as a :class:`~pathlib.Path`."""
    check_output_folder(output)
    refuse_overlap([output, *also_writes], list(inputs))
    return Path(output).expanduser()
