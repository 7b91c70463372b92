"""SAM 2.1 memory propagation (engine): same masks as SAM2VideoPredictor, bounded memory, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.errors import CheckpointError, InvalidPromptError, InvalidSequenceError, TrackingError

SIZE = 64  # model input side: small, so each frame takes a fraction of a second
T, H, W = 20, 60, 80


def drifting_cells(t_n: int = T, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 frames of two bright ellipses drifting over noise, and their (T, H, W) labels."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 40, (t_n, h, w), dtype=np.uint8)
    labels = np.zeros((t_n, h, w), np.int32)
    for t in range(t_n):
        for lab, (r, c, a, b, v) in enumerate(((20 + 0.5 * t, 20 + t, 10, 13, 230),
                                               (40, 60 - t, 11, 9, 150)), start=1):
            rr, cc = ellipse(r, c % w, a, b, (h, w))
            frames[t, rr, cc] = v
            labels[t, rr, cc] = lab
    return frames, labels


@pytest.fixture(scope="module")
def model():
    from sam2_state import perturbed_sam2_state

    from napari_sam.model.sam2 import build_sam2

    torch.set_num_threads(1)
    return build_sam2("sam2.1_hiera_tiny", perturbed_sam2_state("sam2.1_hiera_tiny"), image_size=SIZE)


def _reference_labels(model, frames, seed_frame, seeds, correction):
    """Labels from Meta's API on napari-sam's SAM2VideoPredictor (every output kept): the same
    session, each frame written with the higher logit winning and the given masks as given."""
    from napari_sam import SAM2VideoPredictor

    p = SAM2VideoPredictor(model)
    st = p.init_state(frames)
    p.add_new_points_or_box(st, seed_frame, 1, points=[[20, 20]], labels=[1], box=[8, 10, 34, 31],
                            normalize_coords=False)
    p.add_new_mask(st, seed_frame, 2, seeds[seed_frame] == 2)
    out = np.zeros(frames.shape, np.int32)

    def write(f, ids, logits):
        lg = logits[:, 0].numpy().copy()
        if f == seed_frame:
            lg[ids.index(2)] = np.where(seeds[seed_frame] == 2, np.inf, -np.inf)
        win = lg.argmax(0)
        out[f] = np.where(np.take_along_axis(lg, win[None], 0)[0] > 0, np.array(ids)[win], 0)

    for rev in (False, True):
        for f, ids, logits in p.propagate_in_video(st, reverse=rev):
            write(f, ids, logits)
    t, pts = correction
    p.add_new_points_or_box(st, t, 1, points=pts, labels=[1, 0], normalize_coords=False)
    for f, ids, logits in p.propagate_in_video(st, start_frame_idx=t):
        write(f, ids, logits)
    return out


def test_two_objects_match_the_video_predictor(model):
    from napari_sam.engine.volumes.memory_propagation import MemoryTracker, ObjectPrompt

    frames, seeds = drifting_cells()
    seed_frame, correction = 6, (2, [[21, 22], [50, 70]])
    expected = _reference_labels(model, frames, seed_frame, seeds, correction)

    labels = np.zeros(frames.shape, np.uint16)
    labels[:, :3, :3] = 9  # another object the run must leave alone
    tr = MemoryTracker(model, frames, labels=labels)
    tr.add_prompts([ObjectPrompt(seed_frame, 1, points=[[20, 20]], point_labels=[1], box=[10, 8, 31, 34]),
                    ObjectPrompt(seed_frame, 2, mask=seeds[seed_frame] == 2)])
    steps = list(tr.run())
    assert [s.frame for s in steps] == list(range(seed_frame, T)) + list(range(seed_frame - 1, -1, -1))
    assert steps[-1].done == steps[-1].total == T
    t, pts = correction  # a correction (row, col) on frame 2, re-propagated forward from there
    tr.add(ObjectPrompt(t, 1, points=np.array(pts)[:, ::-1], point_labels=[1, 0]))
    list(tr.run(start=t, directions=(1,)))

    got = labels.astype(np.int32)
    corner = np.zeros(frames.shape, bool)
    corner[:, :3, :3] = True
    assert (labels[corner & (expected == 0)] == 9).all()
    free = ~corner | (expected > 0)
    assert np.array_equal(got[free & ~corner], expected[free & ~corner])
    assert set(np.unique(got)) >= {1, 2, 9}
    for oid in (1, 2):  # each object is found on most frames, with its own id
        assert sum((got[f] == oid).any() for f in range(T)) >= T // 2
    assert np.array_equal(labels[seed_frame] == 2, seeds[seed_frame] == 2)  # the drawn seed stays as drawn


def test_state_memory_is_flat_in_the_number_of_frames(model):
    from napari_sam import SAM2VideoPredictor

    frames, seeds = drifting_cells(40)
    sizes = {}
    for bounded in (True, False):
        p = SAM2VideoPredictor(model, bounded_memory=bounded)
        st = p.init_state(frames)
        p.add_new_mask(st, 0, 1, seeds[0] == 1)
        held = []
        for f, _, _ in p.propagate_in_video(st):
            held.append(p.memory_bytes(st))
        sizes[bounded] = held
    bounded, full = sizes[True], sizes[False]
    # flat once the pointer window (16 frames) has left the prompted frame's (frame 33 on)
    assert bounded[-1] == bounded[34] > 0
    assert full[-1] > 1.1 * full[34]  # the reference keeps every frame's output
    assert bounded[-1] < 0.7 * full[-1]


def test_frames_are_read_lazily_and_written_one_at_a_time(model):
    from napari_sam.engine.volumes.memory_propagation import track

    frames, seeds = drifting_cells(6)

    class Counting:
        shape, dtype = frames.shape, frames.dtype
        reads: list[int] = []

        def __getitem__(self, i):
            self.reads.append(i)
            return frames[i]

    written = {}
    src = Counting()
    gen = track(model, src, seed_labels=seeds[2], seed_frame=2, on_frame=lambda t, plane: written.setdefault(t, plane))
    first = next(gen)
    assert first.frame == 2 and list(written) == [2] and first.labels is None
    reads_before = len(src.reads)
    rest = list(gen)
    assert sorted(written) == list(range(6)) and len(rest) == 5
    assert len(src.reads) - reads_before <= 2 * 6  # about one read per frame and direction, never all up front
    assert np.array_equal(written[2] == 1, seeds[2] == 1)


def test_bad_input_is_refused_clearly(model, tmp_path):
    from napari_sam.engine.volumes.memory_propagation import MemoryTracker, ObjectPrompt, track
    from napari_sam.model import build_sam

    frames, seeds = drifting_cells(4)
    with pytest.raises(CheckpointError, match="SAM 2.1 model"):
        MemoryTracker(build_sam("tiny"), frames)
    with pytest.raises(InvalidSequenceError, match="different shapes"):
        MemoryTracker(model, [frames[0], frames[1][:, :50]])
    with pytest.raises(InvalidSequenceError, match="1 frame"):
        MemoryTracker(model, frames[:1])
    tr = MemoryTracker(model, frames)
    with pytest.raises(InvalidPromptError, match="outside the sequence"):
        tr.add(ObjectPrompt(4, 1, points=[[5, 5]]))
    with pytest.raises(TrackingError, match="Nothing to propagate"):
        next(tr.run())
    with pytest.raises(InvalidPromptError, match="two prompts on frame 1"):
        tr.add_prompts([ObjectPrompt(1, 3, mask=seeds[1] == 1), ObjectPrompt(1, 3, points=[[5, 5]])])
    with pytest.raises(TrackingError, match="no objects"):
        next(track(model, frames, seed_labels=np.zeros(frames.shape[1:], np.int32)))
    with pytest.raises(InvalidPromptError, match="seed frame 7 is outside"):
        next(track(model, frames, seed_labels=seeds[0], seed_frame=7))
    user = seeds.copy()
    with pytest.raises(InvalidImageError):
        MemoryTracker(model, frames, labels=user[:2])
    assert np.array_equal(user, seeds)


from napari_sam.errors import InvalidImageError  # noqa: E402


def test_propagate_with_a_sam2_model_uses_memory_and_keeps_partial_results(model):
    from napari_sam.engine.volumes.propagation import Seed, propagate, propagate_blocking

    frames, seeds = drifting_cells(5)
    with pytest.raises(InvalidImageError, match="needs the stack"):
        next(propagate(model, {1: Seed(2, seeds[2] == 1)}))
    steps = []
    labels = propagate_blocking(model, {1: Seed(2, seeds[2] == 1)}, image=frames,
                                callback=lambda p: steps.append(p.frame) or len(steps) < 2)
    assert steps == [2, 3]  # cancelled after the second frame
    assert np.array_equal(labels[2] == 1, seeds[2] == 1)
    assert not labels[[0, 1, 4]].any()
