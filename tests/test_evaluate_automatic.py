"""Automatic-segmentation scoring: IoU matching, pooled F1, the classical baseline."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_sam.training.evaluate_automatic import classical_labels, evaluate_automatic, matched_pairs


def two_touching_nuclei(size: int = 64):
    lab = np.zeros((size, size), np.int32)
    lab[disk((32, 22), 11, shape=lab.shape)] = 1
    lab[disk((32, 42), 11, shape=lab.shape)] = 2  # overlaps the first: they touch along a seam
    lab[disk((10, 10), 5, shape=lab.shape)] = 3
    return lab


def brute_force(truth, found, threshold=0.5):
    n = 0
    for i in np.unique(truth[truth > 0]):
        for j in np.unique(found[found > 0]):
            t, f = truth == i, found == j
            n += (t & f).sum() / (t | f).sum() > threshold
    return n


def test_matching_counts_only_objects_above_half_iou():
    truth = two_touching_nuclei()
    assert matched_pairs(truth, truth) == 3
    assert matched_pairs(truth, truth * 7) == 3  # ids do not matter
    merged = np.where(truth > 0, 1, 0)
    merged[truth == 3] = 5
    assert matched_pairs(truth, merged) == brute_force(truth, merged) == 2  # the larger nucleus covers > half
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, (2, 12, 12))
        assert matched_pairs(a, b) == brute_force(a, b)
    assert matched_pairs(truth, np.zeros_like(truth)) == 0
    with pytest.raises(ValueError):
        matched_pairs(truth, truth, threshold=0.3)


def test_pooled_f1_and_the_classical_baseline_splits_touching_nuclei():
    truth = two_touching_nuclei()
    img = (truth > 0) * 1000.0 + 100
    pairs = [(img.astype(np.uint16), truth)] * 2
    perfect = evaluate_automatic(lambda im: truth, pairs)
    assert (perfect.f1, perfect.n_true, perfect.n_found, perfect.matched) == (1.0, 6, 6, 6)
    merged = evaluate_automatic(lambda im: (truth > 0).astype(np.int32), pairs)
    assert merged.matched == 0 and merged.f1 == 0.0 and merged.n_found == 2
    found = classical_labels(img)
    assert found.max() == 3 and matched_pairs(truth, found) == 3
    assert classical_labels(np.zeros((8, 8))).max() == 0
