"""Per-frame SAM 2.1 features in the embedding store: a second propagation encodes no frame
again (counted at the image encoder), with identical masks; memory stays bounded by the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_state import EncoderCalls

SIZE = 64
T, H, W = 5, 60, 80


@pytest.fixture(scope="module")
def model():
    from sam2_state import perturbed_sam2_state

    from napari_sam.model.sam2 import build_sam2

    return build_sam2("sam2.1_hiera_tiny", perturbed_sam2_state("sam2.1_hiera_tiny"), image_size=SIZE)


@pytest.fixture(scope="module")
def frames():
    from test_memory_propagation import drifting_cells

    return drifting_cells(T, H, W)



def _track(predictor, frames, seeds, correction=None):
    from napari_sam.engine.volumes.memory_propagation import MemoryTracker, ObjectPrompt

    tr = MemoryTracker(predictor, frames)
    tr.add_prompts([ObjectPrompt(3, 1, mask=seeds[2] == 1), ObjectPrompt(2, 2, mask=seeds[2] == 2)])
    if correction is not None:
        tr.add(correction)
    list(tr.run())
    return np.array(tr.labels)


def test_second_propagation_encodes_no_frame_and_gives_the_same_masks(model, frames):
    from napari_sam import SAM2VideoPredictor
    from napari_sam.engine.volumes.memory_propagation import ObjectPrompt

    images, seeds = frames
    calls = EncoderCalls(model)
    try:
        kept = SAM2VideoPredictor(model, bounded_memory=True)
        first = _track(kept, images, seeds)
        n_first = calls.n
        assert n_first == kept.encoded_frames == T  # within one run the seed frame is not encoded twice
        second = _track(kept, images, seeds)
        assert calls.n == n_first  # zero frames encoded again
        np.testing.assert_array_equal(second, first)
        assert (first == 1).any() and (first == 2).any()
        # a re-propagation after a correction: no encoder pass, and the masks of a predictor without reuse
        fix = ObjectPrompt(3, 1, points=np.array([[25.0, 25.0], [40.0, 60.0]]), point_labels=[1, 0])
        corrected = _track(kept, images, seeds, fix)
        assert calls.n == n_first
        fresh = SAM2VideoPredictor(model, bounded_memory=True)
        np.testing.assert_array_equal(corrected, _track(fresh, images, seeds, fix))
        assert fresh.encoded_frames == T
        # changed pixels are encoded again (the key is the frame's exact pixels)
        from napari_sam.engine.sam2.frames import FrameSource

        edited = images.copy()
        edited[4, :5, :5] += 1
        before = kept.encoded_frames
        kept.frame_features.get(FrameSource(edited), 4, torch.device("cpu"))
        kept.frame_features.get(FrameSource(edited), 3, torch.device("cpu"))  # unchanged: reused
        assert kept.encoded_frames == before + 1
    finally:
        calls.close()


def test_the_store_is_bounded_and_keyed_by_the_weights(model, frames):
    from napari_sam import SAM2VideoPredictor
    from napari_sam.engine.store.embedding_store import EmbeddingStore

    images, seeds = frames
    p = SAM2VideoPredictor(model, bounded_memory=True)
    st = p.init_state(images)
    one = p.frame_features.store.info()["memory_bytes"]
    assert one > 0
    store = EmbeddingStore(None, max_memory_bytes=3 * one)
    p = SAM2VideoPredictor(model, bounded_memory=True, feature_store=store)
    _track(p, images, seeds)
    assert store.info()["memory_entries"] == 3 and store.info()["memory_bytes"] <= 3 * one  # an LRU, not every frame
    # another model's weights sharing the store never get these features
    from sam2_state import perturbed_sam2_state

    from napari_sam.model.sam2 import build_sam2

    other = build_sam2("sam2.1_hiera_tiny", perturbed_sam2_state("sam2.1_hiera_tiny", seed=5), image_size=SIZE)
    q = SAM2VideoPredictor(other, bounded_memory=True, feature_store=store)
    q.init_state(images)
    q.frame_features.get(st.frames, T - 1, torch.device("cpu"))  # in the store for the first model
    assert q.encoded_frames == 2  # frame 0 at init_state, and frame T-1: nothing reused across weights
