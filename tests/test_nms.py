"""The plain-torch box NMS keeps exactly what torchvision's batched NMS keeps (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam.engine.automatic.nms import batched_nms, box_nms

tv_ops = pytest.importorskip("torchvision.ops")


@st.composite
def box_sets(draw, integer: bool):
    n = draw(st.integers(0, 40))
    if integer:  # few distinct values: many exact ties in IoU and in score
        coord = st.integers(0, 12).map(float)
        score = st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0])
    else:
        coord = st.floats(0, 1000, allow_nan=False, width=32)
        score = st.floats(0, 1, allow_nan=False, width=32)
    rows = []
    for _ in range(n):
        a, b, c, d = (draw(coord) for _ in range(4))
        rows.append([min(a, c), min(b, d), max(a, c), max(b, d)])
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(n, 4)
    scores = torch.tensor([draw(score) for _ in range(n)], dtype=torch.float32)
    cats = torch.tensor([draw(st.integers(0, 2)) for _ in range(n)], dtype=torch.int64)
    thr = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.86, 1.0]) | st.floats(0, 1))
    return boxes, scores, cats, thr


@settings(max_examples=150, deadline=None)
@given(box_sets(integer=True))
def test_single_category_equals_torchvision_with_ties(case):
    boxes, scores, _, thr = case
    ours = box_nms(boxes, scores, thr)
    ref = tv_ops.batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.int64), thr)
    assert ours.tolist() == ref.tolist()
    assert ours.dtype == torch.int64


@settings(max_examples=150, deadline=None)
@given(box_sets(integer=False))
def test_single_category_equals_torchvision_float_boxes(case):
    boxes, scores, _, thr = case
    assert box_nms(boxes, scores, thr).tolist() == tv_ops.nms(boxes, scores, thr).tolist()


@settings(max_examples=150, deadline=None)
@given(box_sets(integer=True))
def test_categories_equal_torchvision(case):
    # integer coordinates: torchvision's per-category offset is exact, so both compute the same IoUs
    boxes, scores, cats, thr = case
    ours = batched_nms(boxes, scores, cats, thr)
    ref = tv_ops.batched_nms(boxes, scores, cats, thr)
    assert ours.tolist() == ref.tolist()


def test_many_boxes_equal_torchvision():
    # over 1000 boxes torchvision switches to its per-category loop on CPU
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=g) * 900
    wh = torch.rand(3000, 2, generator=g) * 120 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(3000, generator=g)
    ours = box_nms(boxes, scores, 0.7)
    ref = tv_ops.batched_nms(boxes, scores, torch.zeros(3000, dtype=torch.int64), 0.7)
    assert 0 < len(ours) < 3000
    assert ours.tolist() == ref.tolist()


def test_equal_scores_keep_the_lower_index_and_float64_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], dtype=torch.float64)
    scores = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert box_nms(boxes, scores, 0.5).tolist() == [0] == tv_ops.nms(boxes, scores, 0.5).tolist()


def test_integer_boxes_and_bad_shapes():
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 5], [10, 10, 12, 12]])
    assert box_nms(boxes, torch.tensor([1.0, 0.0, 1.0]), 0.5).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores and idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    assert np.array_equal(box_nms(torch.zeros(1, 4), torch.ones(1), 0.5).numpy(), [0])
