"""Progress reporting for long operations.

Long operations (embedding a stack, automatic segmentation, propagation,
batch runs, training) are written as generators that ``yield`` a
:class:`Progress` after each unit of work and ``return`` their result. The GUI
runs such a generator in a napari worker (mapping yields to a progress bar and
honouring cancel between yields); scripts and the command line call
:func:`run_blocking`, optionally with a callback or a tqdm bar.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long operation: ``done`` of ``total`` units, with a short description."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressGenerator = Generator[Progress, None, T]


def run_blocking(
    gen: Generator[Progress, Any, T],
    callback: Callable[[Progress], Any] | None = None,
    show_progress: bool = False,
    description: str = "",
) -> T:
    """Run a progress generator to completion and return its result.

    Args:
        callback: called with each :class:`Progress`; if it returns ``False`` the
            operation is cancelled (the generator is closed) and ``None`` returned.
        show_progress: draw a tqdm bar on stderr.
    """
    bar = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if show_progress:
                if bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=p.total, desc=description or p.message)
                bar.total = p.total
                bar.n = p.done
                bar.set_postfix_str(p.message, refresh=True)
            if callback is not None and callback(p) is False:
                gen.close()
                return None
    finally:
        if bar is not None:
            bar.close()
