"""Run engine work off the GUI thread: napari workers with a progress bar, cancel, and a sync switch.

``NAPARI_SAM_SYNC=1`` runs every job inline on the calling thread (deterministic
tests; a fallback where workers misbehave). Otherwise a job runs in napari's
``create_worker`` and its :class:`~napari_sam.engine.progress.Progress` yields drive
a ``napari.utils.progress`` bar in the activity dock; ``Job.cancel()`` stops it at
the next yield and closes its generator in the worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from ..engine.progress import CANCELLED, relay, run_blocking
from .gl_safety import protect_process

SYNC_ENV = "NAPARI_SAM_SYNC"


def sync_mode() -> bool:
    """True when ``NAPARI_SAM_SYNC`` asks for inline (blocking) execution."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class Job:
    """A running (or finished) piece of work; ``worker`` is None in sync mode."""

    def __init__(self, worker: Any = None, tag: Any = None) -> None:
        self.worker = worker
        self.tag = tag
        self.done = worker is None
        self.cancelled = False

    @property
    def running(self) -> bool:
        return not self.done

    def cancel(self) -> None:
        """Ask the job to stop at its next progress step.

        The job's generator is then closed in the worker thread, so its own clean-up
        (``finally`` / ``GeneratorExit``: e.g. training saving its last checkpoint)
        runs before the job reports finished; ``on_return`` is not called.
        """
        self.cancelled = True


def _update_bar(bar: Any, p: Any) -> None:
    total = int(getattr(p, "total", 0) or 0)
    if bar.total != total:
        bar.total = total
    bar.n = int(getattr(p, "done", 0))
    msg = getattr(p, "message", "")
    if msg:
        bar.set_description(msg)
    bar.refresh()


def start_generator_job(
    make_gen: Callable[[], Generator],
    *,
    description: str,
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finish: Callable[[], None] | None = None,
    tag: Any = None,
) -> Job:
    """Run a progress generator (``make_gen()``); its return value goes to ``on_return`` on the GUI thread.

    Before it starts, :func:`~napari_sam.widgets.gl_safety.protect_process` keeps triton (and
    ``torch.compile``) out of this process: loading them once napari's OpenGL context exists can crash napari.
    """
    protect_process()
    if sync_mode():
        job = Job(None, tag)
        try:
            result = run_blocking(make_gen())
        except Exception as e:  # noqa: BLE001  (reported, never raised into Qt)
            on_error(e)
        else:
            on_return(result)
        finally:
            if on_finish is not None:
                on_finish()
        return job

    from napari.qt.threading import create_worker
    from napari.utils import progress

    def work():
        # Cooperative cancel instead of worker.quit(): quitting leaves the generator
        # suspended (closed only when garbage-collected, on whichever thread that is).
        return (yield from relay(make_gen(), cancelled=lambda: job.cancelled))  # CANCELLED when cancelled

    worker = create_worker(work, _start_thread=False, _ignore_errors=True)
    job = Job(worker, tag)  # read by work() once the worker runs
    bar = progress(total=0, desc=description)

    def finished():
        job.done = True
        bar.close()
        if on_finish is not None:
            on_finish()

    worker.yielded.connect(lambda p: _update_bar(bar, p))
    worker.returned.connect(lambda result: None if result is CANCELLED else on_return(result))
    worker.errored.connect(on_error)
    worker.finished.connect(finished)
    worker.start()
    return job


def start_function_job(
    func: Callable[[], Any],
    *,
    description: str,
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finish: Callable[[], None] | None = None,
    tag: Any = None,
) -> Job:
    """Run ``func()`` (no progress steps: an indeterminate bar) like :func:`start_generator_job`."""

    def gen():
        return func()
        yield  # pragma: no cover  (makes this a generator)

    return start_generator_job(gen, description=description, on_return=on_return, on_error=on_error,
                               on_finish=on_finish, tag=tag)
