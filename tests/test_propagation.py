"""3D propagation logic (with an oracle predictor) and a smoke test through the real Segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.volumes.propagation import (
    PropagationStep,
    Seed,
    SlicePrediction,
    StopCriteria,
    prompt_from_mask,
    propagate,
    propagate_blocking,
    seeds_from_labels,
)
from napari_sam.errors import InvalidPromptError

PERMISSIVE = StopCriteria(min_score=0.0, min_area=1, min_area_ratio=0.0, max_area_ratio=1e9, min_overlap=0.0)


def ellipsoid_volume(shape=(24, 48, 48), centre=(12, 24, 24), radii=(8, 12, 10), label=1, out=None) -> np.ndarray:
    """A (Z, H, W) int32 volume holding one ellipsoid (drawn with skimage.draw.ellipsoid)."""
    from skimage.draw import ellipsoid

    out = np.zeros(shape, np.int32) if out is None else out
    e = ellipsoid(*radii)[1:-1, 1:-1, 1:-1]
    z0, r0, c0 = (c - r for c, r in zip(centre, radii))
    sl = tuple(slice(max(0, o), o + n) for o, n in zip((z0, r0, c0), e.shape))
    crop = e[tuple(slice(max(0, -o), max(0, -o) + (s.stop - s.start)) for o, s in zip((z0, r0, c0), sl))]
    out[sl][crop[: out[sl].shape[0], : out[sl].shape[1], : out[sl].shape[2]]] = label
    return out


class Oracle:
    """Predicts the true mask of slice z inside the prompt box; records prompts."""

    def __init__(self, truth: np.ndarray, label: int | None = None, score: float = 0.95):
        self.truth, self.label, self.score = truth, label, score
        self.calls: list[tuple[int, object]] = []

    def __call__(self, z, prompt):
        self.calls.append((z, prompt))
        plane = self.truth[z]
        if self.label is None:  # the object under the deepest prompt point
            r, c = np.round(prompt.points[0]).astype(int)
            lab = plane[r, c]
            m = (plane == lab) & (lab > 0)
        else:
            m = plane == self.label
        box = np.zeros_like(m)
        r0, c0, r1, c1 = prompt.box
        box[int(np.floor(r0)):int(np.ceil(r1)), int(np.floor(c0)):int(np.ceil(c1))] = True
        return SlicePrediction(m & box, self.score, np.full((8, 8), float(z), np.float32))


def test_single_object_propagates_both_ways_and_stops_where_it_ends():
    truth = ellipsoid_volume()
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    assert zs[0] > 0 and zs[-1] < truth.shape[0] - 1  # the object ends inside the stack
    seeds = {1: Seed(12, truth[12] == 1)}
    oracle = Oracle(truth, label=1)
    steps = list_steps = []
    gen = propagate(oracle, seeds, shape=truth.shape, criteria=PERMISSIVE)
    while True:
        try:
            list_steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    np.testing.assert_array_equal(result, truth)
    assert all(isinstance(s, PropagationStep) for s in steps)
    stopped = [s for s in steps if s.stopped]
    assert {s.direction for s in stopped} == {1, -1}
    assert {s.z for s in stopped} == {zs[0] - 1, zs[-1] + 1}
    assert steps[-1].done == steps[-1].total
    # slices beyond the object's end were never predicted
    assert max(z for z, _ in oracle.calls) == zs[-1] + 1 and min(z for z, _ in oracle.calls) == zs[0] - 1


def test_prompts_box_points_and_previous_logits():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:35] = True
    p = prompt_from_mask(mask, logits=np.ones((4, 4)), n_points=3, box_margin=0.1)
    np.testing.assert_allclose(p.box, [9, 2, 21, 38])
    assert p.points.shape == (3, 2) and (p.point_labels == 1).all()
    assert all(mask[int(r), int(c)] for r, c in p.points)
    assert np.linalg.norm(p.points[1] - p.points[0]) > 5  # spread out, not all at the centre
    assert p.mask_input is not None
    with pytest.raises(InvalidPromptError, match="empty"):
        prompt_from_mask(np.zeros((5, 5), bool))

    truth = ellipsoid_volume()
    oracle = Oracle(truth, label=1)
    propagate_blocking(oracle, {1: Seed(12, truth[12] == 1)}, shape=truth.shape, criteria=PERMISSIVE)
    up = [(z, pr) for z, pr in oracle.calls if z > 12]
    assert up[0][1].mask_input is None  # the seed has no logits
    assert up[1][1].mask_input is not None and up[1][1].mask_input[0, 0] == up[0][0]  # previous slice's logits
    oracle2 = Oracle(truth, label=1)
    propagate_blocking(oracle2, {1: Seed(12, truth[12] == 1)}, shape=truth.shape, criteria=PERMISSIVE,
                       use_mask_input=False)
    assert all(pr.mask_input is None for _, pr in oracle2.calls)


@pytest.mark.parametrize(
    "spoil, reason",
    [
        ("score", "predicted IoU"),
        ("shrink", "area fell"),
        ("shift", "IoU"),
        ("grow", "area grew"),
    ],
)
def test_stop_criteria(spoil, reason):
    truth = ellipsoid_volume()
    seeds = {1: Seed(12, truth[12] == 1)}
    oracle = Oracle(truth, label=1)

    def predict(z, prompt):
        pred = oracle(z, prompt)
        if z != 15:
            return pred
        m = pred.mask
        if spoil == "score":
            return SlicePrediction(m, 0.1, pred.logits)
        if spoil == "shrink":
            small = np.zeros_like(m)
            r, c = np.argwhere(m)[0]
            small[r:r + 3, c:c + 3] = m[r:r + 3, c:c + 3]
            return SlicePrediction(small, 0.9, pred.logits)
        if spoil == "shift":
            return SlicePrediction(np.roll(m, 30, axis=1), 0.9, pred.logits)
        return SlicePrediction(np.ones_like(m), 0.9, pred.logits)

    steps = []
    result = propagate_blocking(predict, seeds, shape=truth.shape, callback=steps.append,
                                criteria=StopCriteria(min_area=1))
    ups = [s for s in steps if s.direction == 1]
    assert ups[-1].z == 15 and reason in ups[-1].stopped
    assert not result[15:].any()  # the failing slice is not written
    np.testing.assert_array_equal(result[12:15], truth[12:15])


def test_several_objects_keep_ids_and_never_overwrite_others():
    truth = ellipsoid_volume(centre=(12, 14, 14), radii=(6, 8, 8), label=3)
    ellipsoid_volume(centre=(14, 34, 34), radii=(7, 9, 9), label=7, out=truth)
    existing = np.zeros_like(truth)
    existing[:, 30:40, 30:33] = 9  # an unrelated object overlapping object 7
    oracle = Oracle(truth)
    seeds = {3: Seed(12, truth[12] == 3), 7: Seed(16, truth[16] == 7)}
    result = propagate_blocking(oracle, seeds, labels=existing.copy(), criteria=PERMISSIVE)
    assert (result[existing == 9] == 9).all()
    expect = np.where(existing == 9, 9, truth)
    np.testing.assert_array_equal(result, expect)
    # one upward sweep then one downward sweep: each slice embedding is needed at most twice
    zs = [z for z, _ in oracle.calls]
    turn = int(np.argmax(zs))
    assert zs[: turn + 1] == sorted(zs[: turn + 1]) and zs[turn + 1:] == sorted(zs[turn + 1:], reverse=True)
    assert zs[turn + 1] < zs[turn]


def test_seed_from_labels_and_repropagate_from_corrected_slice():
    truth = ellipsoid_volume(label=4)
    other = np.zeros_like(truth)
    other[:, 0:5, 0:5] = 2
    labels = np.where(other > 0, other, 0)
    labels[12][truth[12] == 4] = 4
    propagate_blocking(Oracle(truth, label=4), seeds_from_labels(labels, 4, 12), labels=labels, criteria=PERMISSIVE)
    np.testing.assert_array_equal(labels, np.where(other > 0, other, truth))
    before = labels.copy()
    # the user corrects slice 14: the object there (and beyond) is really shifted by 3 columns
    corrected = truth.copy()
    corrected[14:] = np.roll(truth[14:], 3, axis=2)
    seed = {4: Seed(14, corrected[14] == 4)}
    propagate_blocking(Oracle(corrected, label=4), seed, labels=labels, directions=(1,), criteria=PERMISSIVE)
    np.testing.assert_array_equal(labels[:14], before[:14])  # untouched below k
    np.testing.assert_array_equal(labels[14:], np.where(other[14:] > 0, other[14:], corrected[14:]))
    assert (labels[other > 0] == 2).all()
    with pytest.raises(InvalidPromptError, match="no pixels"):
        seeds_from_labels(labels, 5, 12)


def test_cancel_keeps_partial_result():
    truth = ellipsoid_volume()
    labels = np.zeros_like(truth)
    gen = propagate(Oracle(truth, label=1), {1: Seed(12, truth[12] == 1)}, labels=labels, criteria=PERMISSIVE)
    steps = [next(gen) for _ in range(3)]
    gen.close()
    assert steps[-1].labels is labels
    np.testing.assert_array_equal(labels[12:16], truth[12:16])
    assert not labels[16:].any() and not labels[:12].any()
    # blocking wrapper: callback returning False cancels and returns the partial volume
    partial = propagate_blocking(Oracle(truth, label=1), {1: Seed(12, truth[12] == 1)}, shape=truth.shape,
                                 criteria=PERMISSIVE, callback=lambda p: p.done < 2)
    assert partial is not None and partial[12:14].any() and not partial[:12].any()


def test_bad_seeds():
    with pytest.raises(InvalidPromptError, match="No seeds"):
        propagate_blocking(lambda z, p: None, {}, shape=(3, 4, 4))
    with pytest.raises(InvalidPromptError, match="outside"):
        propagate_blocking(lambda z, p: None, {1: Seed(5, np.ones((4, 4), bool))}, shape=(3, 4, 4))
    with pytest.raises(InvalidPromptError, match="shape"):
        propagate_blocking(lambda z, p: None, {1: Seed(0, np.ones((5, 4), bool))}, shape=(3, 4, 4))
    with pytest.raises(InvalidPromptError, match="empty"):
        propagate_blocking(lambda z, p: None, {1: Seed(0, np.zeros((4, 4), bool))}, shape=(3, 4, 4))
    with pytest.raises(InvalidPromptError, match="positive"):
        propagate_blocking(lambda z, p: None, {0: Seed(0, np.ones((4, 4), bool))}, shape=(3, 4, 4))


def test_single_slice_stack_returns_the_seed():
    m = np.zeros((10, 10), bool)
    m[2:5, 2:5] = True
    out = propagate_blocking(lambda z, p: pytest.fail("no other slice"), {1: Seed(0, m)}, shape=(1, 10, 10))
    np.testing.assert_array_equal(out[0], m.astype(np.int32))


def test_smoke_through_real_segmenter(tiny_model):
    from napari_sam.engine.prediction.segmenter import Segmenter

    truth = ellipsoid_volume(shape=(5, 40, 40), centre=(2, 20, 20), radii=(3, 10, 10))
    stack = (truth * 2000 + 100).astype(np.uint16)
    seg = Segmenter(tiny_model, device="cpu")
    seg.set_image(stack)
    steps = []
    out = propagate_blocking(seg, {1: Seed(2, truth[2] == 1)}, callback=steps.append, criteria=PERMISSIVE)
    assert out.shape == (5, 40, 40) and out.dtype == np.int32
    np.testing.assert_array_equal(out[2] == 1, truth[2] == 1)
    assert steps and steps[0].z in (1, 3) and all(isinstance(s, PropagationStep) for s in steps)
