"""One Segmenter shared by threads: every answer is right, or a ConcurrentUseError says why not."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_sam import Segmenter
from napari_sam.errors import ConcurrentUseError


def _images(cells_image):
    img, _ = cells_image
    return [img, np.ascontiguousarray(img[::-1]), np.ascontiguousarray(np.roll(img, 60, axis=1))]


def _slow_decoder(seg, monkeypatch):
    """Let other threads run between the predictor's embedding and its decoder (as a busy machine does)."""
    original = seg.predictor.predict

    def predict(*args, **kwargs):
        time.sleep(0.002)
        return original(*args, **kwargs)

    monkeypatch.setattr(seg.predictor, "predict", predict)


def _run_threads(work, n_threads=3, rounds=8):
    results, errors = [], []

    def loop(i):
        for r in range(rounds):
            try:
                results.append(work(i, r))
            except Exception as e:  # noqa: BLE001 - collected for the assertions
                errors.append(e)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


POINT = [(50, 60)]


def test_threads_on_one_shared_image_get_the_masks_of_their_slice(tiny_model, cells_image, monkeypatch):
    stack = np.stack(_images(cells_image))
    seg = Segmenter(model=tiny_model)
    seg.set_image(stack, axes="zyx")
    expected = [seg.segment(points=POINT, slice_index=z, multimask=False) for z in range(3)]
    seg.set_image(stack, axes="zyx")  # fresh caches: threads embed while others predict
    _slow_decoder(seg, monkeypatch)
    results, errors = _run_threads(
        lambda i, r: (i, seg.segment(points=POINT, slice_index=i, multimask=False)))
    assert not errors
    assert len(results) == 24 and all(np.array_equal(m, expected[i]) for i, m in results)


def test_threads_switching_images_never_get_another_threads_mask(tiny_model, cells_image, monkeypatch):
    images = _images(cells_image)
    seg = Segmenter(model=tiny_model)
    expected = []
    for im in images:
        seg.set_image(im)
        expected.append(seg.segment(points=POINT, multimask=False))
    assert not np.array_equal(expected[0], expected[2])
    _slow_decoder(seg, monkeypatch)

    def work(i, r):
        seg.set_image(images[i])
        time.sleep(0.001)
        return i, seg.segment(points=POINT, multimask=False)

    results, errors = _run_threads(work)
    wrong = [i for i, m in results if not np.array_equal(m, expected[i])]
    assert not wrong, f"{len(wrong)} of {len(results)} masks were of another thread's image"
    assert all(isinstance(e, ConcurrentUseError) for e in errors), errors
    assert errors, "three threads switching images with pauses must collide at least once"
    assert "segmenter.lock" in str(errors[0])

    def locked(i, r):
        with seg.lock:
            seg.set_image(images[i])
            time.sleep(0.001)
            return i, seg.segment(points=POINT, multimask=False)

    results, errors = _run_threads(locked)
    assert not errors and all(np.array_equal(m, expected[i]) for i, m in results)


def test_embedding_generator_stops_when_the_image_is_replaced(tiny_model, cells_image):
    images = _images(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape=128)
    seg.set_image(images[0])
    gen = seg.embed()
    next(gen)
    seg.set_image(images[1])
    with pytest.raises(ConcurrentUseError, match="changed while"):
        for _ in gen:
            pass


def test_widget_embedding_job_of_a_replaced_image_ends_quietly_as_stale(tiny_model, cells_image):
    import threading as th

    from napari_sam.adapters.embedding_jobs import EmbeddingJobs

    images = _images(cells_image)
    seg = Segmenter(model=tiny_model, tile_shape=128)
    seg.set_image(images[0])
    jobs = EmbeddingJobs(th.Lock())
    gen = jobs.job(seg, ())
    next(gen)
    jobs.invalidate()
    seg.set_image(images[1])  # the layer's data were replaced while the worker embedded
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert not jobs.is_current(stop.value.value)
