"""Click-ahead: start the decoder when the mouse button goes down, use its answer when the click lands.

napari adds a point when the mouse button is *released* (press and release closer than its
drag threshold), and then runs its own bookkeeping (the layer's extent, the viewer's dims, the
selection) for ~25 ms before the data event reaches napari-sam. The decoder only needs the
prompts, and at press time they are known: the layer's prompts plus the pressed position with
the polarity the modifiers give. :class:`ClickAhead` runs the same ``predict_prompts`` call in
one background thread from the press on; when the data event comes, the controller takes its
answer only if the prompts it reads from the layers are exactly the ones that were predicted
(same slice, points, labels, box, edit, segmenter and image), and otherwise discards it and decodes as
before. Either way the preview is bit for bit what a plain decode of the layer's prompts gives:
click-ahead changes when the decoder runs, never what it computes.

The background decode holds the controller's Segmenter lock like any other use of the
Segmenter; it only starts if the lock is free (no embedding running), and everything that
takes the lock waits for it (a decode is tens of milliseconds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import prompt_layers

__all__ = ["ClickAhead", "prompts_after_click"]

log = logging.getLogger(__name__)


def _signature(segmenter: Any, prompts: prompt_layers.SlicePrompts, key: tuple[int, ...], edit: Any) -> tuple:
    box = None if prompts.box is None else np.asarray(prompts.box, np.float64).tobytes()
    return (
        id(segmenter), segmenter.generation, tuple(key), id(edit),
        np.asarray(prompts.points, np.float64).tobytes(), np.asarray(prompts.labels, np.int64).tobytes(), box,
    )


def prompts_after_click(points_layer: Any, boxes_layer: Any, image_layer: Any, key: tuple[int, ...],
                        data_coords: np.ndarray, positive: bool) -> prompt_layers.SlicePrompts | None:
    """The prompts of slice ``key`` once a point at ``data_coords`` (points-layer data frame) is added.

    None when that point would not be on the slice (then the click does not change its prompts).
    Computed exactly as :func:`~napari_sam.adapters.prompt_layers.read_prompts` will compute them
    from the layers after napari adds the point.
    """
    now = prompt_layers.read_prompts(points_layer, boxes_layer, image_layer, key)
    coords = prompt_layers.layer_to_layer(points_layer, image_layer, np.asarray(data_coords, np.float64)[None])
    if not prompt_layers.on_slice(coords, key)[0]:
        return None
    return prompt_layers.SlicePrompts(
        np.concatenate([now.points, coords[:, -2:]]), np.concatenate([now.labels, [int(bool(positive))]]), now.box
    )


class ClickAhead:
    """At most one decode running ahead of its click, in one background thread.

    ``used`` and ``discarded`` count the answers taken and thrown away (diagnostics and tests).
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.used = 0
        self.discarded = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple, Future] | None = None

    def start(self, predict: Callable[[], Any], segmenter: Any, prompts: prompt_layers.SlicePrompts,
              key: tuple[int, ...], edit: Any) -> None:
        """Run ``predict()`` (the decode of exactly these prompts) in the background."""
        self.discard()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-click-ahead")
        self._pending = (_signature(segmenter, prompts, key, edit), self._pool.submit(self._run, predict))

    def _run(self, predict: Callable[[], Any]) -> Any:
        if not self._lock.acquire(blocking=False):
            return None  # the Segmenter is busy (an embedding): the click is decoded when it lands
        try:
            return predict()
        finally:
            self._lock.release()

    def take(self, segmenter: Any, prompts: prompt_layers.SlicePrompts, key: tuple[int, ...], edit: Any) -> Any:
        """The prediction started ahead for exactly these prompts (waiting for it), else None."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        signature, future = pending
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - the plain decode that follows reports any error properly
            log.debug("click-ahead decode failed (%s); decoding the click again", e)
            result = None
        if result is None or signature != _signature(segmenter, prompts, key, edit):
            self.discarded += 1
            return None
        self.used += 1
        return result

    def wait(self) -> bool:
        """Wait until the decode started ahead (if any) has finished; True if one is pending."""
        pending = self._pending
        if pending is None:
            return False
        try:
            pending[1].result()
        except Exception:  # noqa: BLE001 - take() then decodes again and reports it; discard() drops it
            pass
        return True

    def discard(self) -> None:
        """Forget any decode started ahead, after letting it finish (it holds the Segmenter lock)."""
        if self.wait():
            self._pending = None
            self.discarded += 1

    def close(self) -> None:
        self.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
