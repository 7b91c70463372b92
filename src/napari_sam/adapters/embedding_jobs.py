"""Embedding-job bookkeeping of a :class:`~napari_sam.adapters.controller.SamController`.

Which image generation is current, whether a prediction waits for an embedding, and the
progress generator that embeds one slice (the widget runs it in a worker) followed by a
decoder warm-up. Nothing here starts a thread; the Segmenter lock is taken only around
single encoder steps and the warm-up, never across a ``yield``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ..engine.progress import Progress, relay
from ..errors import ConcurrentUseError, NapariSamError


@dataclass(frozen=True)
class EmbeddingResult:
    """What an embedding job returns: for which image generation and slice, and how long it took."""

    generation: int
    key: tuple[int, ...]
    seconds: float


class EmbeddingJobs:
    """Generation counter, pending-prediction flag and job factory for one controller.

    Attributes:
        generation: bumped whenever the image (or its data, or the controller) changes; a job
            result of an older generation is stale and ignored.
        pending: a prediction was deferred until the displayed slice is embedded.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.generation = 0
        self.pending = False

    def invalidate(self) -> None:
        """Make every job started so far stale."""
        self.generation += 1

    def is_current(self, result: EmbeddingResult | None) -> bool:
        """True for a result of a job started in the current generation."""
        return result is not None and result.generation == self.generation

    @staticmethod
    def needs_embedding(segmenter: Any, key: tuple[int, ...]) -> bool:
        """True when slice ``key`` (() for a 2D image) of ``segmenter``'s image is not embedded."""
        return not segmenter.has_embedding(key or None)

    def job(self, segmenter: Any, key: tuple[int, ...]) -> Generator[Progress, None, EmbeddingResult]:
        """A progress generator embedding slice ``key`` of ``segmenter``; safe to run in a worker.

        The lock is held only while the encoder runs, never across a yield, so cancelling at a
        yield leaves nothing locked. After the encoder, one decoder call on the slice centre warms
        the decoder up, so the first click is as fast as the next ones.
        """
        generation = self.generation
        lock = self.lock

        def run():
            t0 = time.perf_counter()
            try:
                yield from relay(segmenter.embed(key or None), lock=lock)
            except ConcurrentUseError:  # the image was replaced meanwhile: this job is stale
                return EmbeddingResult(generation, key, time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            with lock:
                try:
                    h, w = segmenter.spatial_shape
                    segmenter.predict(points=[((h - 1) / 2, (w - 1) / 2)], slice_index=key or None)
                except NapariSamError:
                    pass
            return EmbeddingResult(generation, key, seconds)

        return run()
