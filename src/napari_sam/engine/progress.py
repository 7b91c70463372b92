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
from contextlib import AbstractContextManager, nullcontext
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


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


#: what :func:`relay` returns when it was cancelled.
CANCELLED: Any = _Cancelled()


def relay(
    gen: Generator[Progress, Any, T],
    *,
    cancelled: Callable[[], bool] | None = None,
    lock: AbstractContextManager | None = None,
    each: Callable[[Progress], Progress] | None = None,
) -> Generator[Progress, None, T]:
    """Yield ``gen``'s progress and return its result: the one pump of progress generators.

    Args:
        cancelled: checked before each step; when it is true, ``gen`` is closed and
            :data:`CANCELLED` returned instead of a result.
        lock: held while ``gen`` runs one step, never across a yield (so cancelling at a
            yield leaves nothing locked); also held while ``gen`` is closed.
        each: maps each :class:`Progress` before it is passed on (e.g. into a larger total).
    ``gen`` is always closed at the end, on the thread running the pump.
    """
    lock = lock if lock is not None else nullcontext()
    try:
        while True:
            if cancelled is not None and cancelled():
                return CANCELLED
            with lock:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    return stop.value
            yield p if each is None else each(p)
    finally:
        with lock:
            gen.close()


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
    stop: list[bool] = []
    result: list[Any] = []

    def pump():
        result.append((yield from relay(gen, cancelled=lambda: bool(stop))))

    bar = None
    try:
        for p in pump():
            if show_progress:
                if bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=p.total, desc=description or p.message)
                bar.total = p.total
                bar.n = p.done
                bar.set_postfix_str(p.message, refresh=True)
            if callback is not None and callback(p) is False:
                stop.append(True)
    finally:
        if bar is not None:
            bar.close()
    return None if result[0] is CANCELLED else result[0]
