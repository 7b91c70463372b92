"""ClickAhead on its own (no viewer): a discarded look-ahead is waited for, counted, and its error dropped."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from napari_sam.adapters.click_ahead import ClickAhead
from napari_sam.adapters.prompt_layers import SlicePrompts


def _start(ahead, predict):
    prompts = SlicePrompts(np.zeros((1, 2)), np.ones(1, np.int64), None)
    ahead.start(predict, SimpleNamespace(generation=0), prompts, (), None)


def test_discard_waits_for_the_running_decode_and_drops_its_error():
    lock = threading.Lock()
    ahead = ClickAhead(lock)
    started, finish, finished = threading.Event(), threading.Event(), threading.Event()

    def failing_decode():
        started.set()
        finish.wait(10)
        finished.set()
        raise RuntimeError("decoder failed")

    _start(ahead, failing_decode)
    assert started.wait(10)
    threading.Timer(0.2, finish.set).start()
    ahead.discard()  # returns only once the decode is over (it held the Segmenter lock); no error raised
    assert finished.is_set() and not lock.locked()
    assert ahead.discarded == 1 and ahead.used == 0
    assert ahead.wait() is False  # nothing pending any more
    ahead.discard()  # nothing to discard: not counted
    assert ahead.discarded == 1
    ahead.close()


def test_a_new_press_discards_the_previous_look_ahead():
    ahead = ClickAhead(threading.Lock())
    _start(ahead, lambda: "first")
    _start(ahead, lambda: "second")
    assert ahead.discarded == 1
    assert ahead.wait() is True
    ahead.close()
    assert ahead.discarded == 2 and ahead.used == 0
