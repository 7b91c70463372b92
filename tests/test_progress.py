"""relay: the one pump of progress generators (engine/progress.py)."""

from __future__ import annotations

import threading

from napari_sam.engine.progress import CANCELLED, Progress, relay, run_blocking


def _steps(n, log):
    try:
        for i in range(n):
            log.append(("step", i))
            yield Progress(i + 1, n)
        return "result"
    finally:
        log.append("closed")


def _collect(gen):
    out = []

    def pump():
        out.append((yield from gen))

    seen = list(pump())
    return seen, out[0]


def test_relay_passes_progress_and_returns_the_result_mapped():
    log = []
    seen, result = _collect(relay(_steps(3, log), each=lambda p: Progress(p.done * 10, p.total * 10)))
    assert result == "result" and [p.done for p in seen] == [10, 20, 30] and log[-1] == "closed"


def test_relay_cancels_between_steps_and_closes_the_generator():
    log, stop = [], []
    gen = relay(_steps(5, log), cancelled=lambda: bool(stop))

    def pump():
        result = yield from gen
        log.append(result)

    for p in pump():
        if p.done == 2:
            stop.append(True)
    assert log == [("step", 0), ("step", 1), "closed", CANCELLED]


def test_relay_holds_the_lock_only_while_the_generator_runs():
    lock = threading.Lock()
    held = []

    def inner():
        held.append(lock.locked())
        yield Progress(1, 1)
        held.append(lock.locked())

    for _ in relay(inner(), lock=lock):
        held.append(lock.locked())  # at the yield: free
    assert held == [True, False, True] and not lock.locked()


def test_run_blocking_cancel_by_callback_returns_none():
    log = []
    assert run_blocking(_steps(5, log), callback=lambda p: p.done < 2) is None
    assert log == [("step", 0), ("step", 1), "closed"]
    assert run_blocking(_steps(2, [])) == "result"
