"""Parity with Meta's reference ``segment-anything`` package (same random weights, same input).

Nothing is downloaded: both models get the same perturbed random weights.
Tolerances: embeddings and logits within 1e-4 of the reference's scale,
IoU predictions within 1e-4, and final masks equal on at least 99.99 % of
pixels (in practice they are identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import perturbed_state_dict
from reference_models import reference_sam

segment_anything = pytest.importorskip("segment_anything")

from napari_sam import SamPredictor, build_sam  # noqa: E402


def _pair(model_type: str, ref_builder):
    torch.manual_seed(0)
    ref = ref_builder()
    sd = perturbed_state_dict(ref, seed=3)
    ref.load_state_dict(sd)
    ref.eval()
    ours = build_sam(model_type)
    ours.load_state_dict(sd, strict=True)
    ours.eval()
    return ref, ours


def _ref_tiny():
    """Meta's modules configured like napari-sam's 'tiny' architecture."""
    from napari_sam.model.config import TINY

    return reference_sam(TINY)


def _image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    from skimage.draw import disk

    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for i in range(6):
        rr, cc = disk((rng.integers(20, h - 20), rng.integers(20, w - 20)), rng.integers(10, 40), shape=(h, w))
        img[rr, cc] = rng.integers(120, 255, 3)
    return img


PROMPTS = {
    "one_point": dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    "pos_neg_points": dict(point_coords=np.array([[300.0, 200.0], [120.5, 400.25]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([100.0, 80.0, 420.0, 390.0])),
    "points_and_box": dict(
        point_coords=np.array([[300.0, 200.0], [150.0, 100.0]]), point_labels=np.array([1, 0]),
        box=np.array([100.0, 80.0, 420.0, 390.0]),
    ),
}


@pytest.fixture(scope="module", params=["vit_b", "tiny"])
def predictors(request):
    if request.param == "vit_b":
        ref, ours = request.getfixturevalue("vit_b_pair")  # built once per session (conftest)
        image = _image(480, 640)  # non-square
    else:
        ref, ours = _pair("tiny", _ref_tiny)
        image = _image(300, 420)
    rp = segment_anything.SamPredictor(ref)
    op = SamPredictor(ours)
    with torch.no_grad():
        rp.set_image(image)
    op.set_image(image)
    return rp, op, image


def _compare(ref_out, our_out):
    (rm, ri, rl), (om, oi, ol) = ref_out, our_out
    scale = max(1.0, float(np.abs(rl).max()))
    assert om.shape == rm.shape and oi.shape == ri.shape and ol.shape == rl.shape
    np.testing.assert_allclose(ol, rl, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(oi, ri, atol=1e-4, rtol=0)
    assert (om == rm).mean() >= 0.9999


def test_embeddings_match(predictors):
    rp, op, _ = predictors
    r = rp.get_image_embedding().numpy()
    o = op.get_image_embedding().numpy()
    assert o.shape == r.shape
    np.testing.assert_allclose(o, r, atol=1e-4 * max(1.0, np.abs(r).max()), rtol=0)
    assert op.original_size == tuple(rp.original_size)
    assert op.input_size == tuple(rp.input_size)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_prompt_parity(predictors, case, multimask):
    rp, op, _ = predictors
    kw = PROMPTS[case]
    if rp.original_size[0] < 480:  # tiny's smaller image: scale prompts into it
        kw = {k: (v * 0.6 if k in ("point_coords", "box") else v) for k, v in kw.items()}
    with torch.no_grad():
        ref_out = rp.predict(multimask_output=multimask, **kw)
    _compare(ref_out, op.predict(multimask_output=multimask, **kw))


def test_mask_input_parity(predictors):
    rp, op, _ = predictors
    pts = dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]))
    with torch.no_grad():
        _, _, low = rp.predict(multimask_output=False, **pts)
        ref_out = rp.predict(mask_input=low, multimask_output=True, **pts)
    _compare(ref_out, op.predict(mask_input=low, multimask_output=True, **pts))


def test_return_logits_parity(predictors):
    rp, op, _ = predictors
    kw = dict(point_coords=np.array([[100.0, 100.0]]), point_labels=np.array([1]))
    with torch.no_grad():
        rm, _, _ = rp.predict(return_logits=True, **kw)
    om, _, _ = op.predict(return_logits=True, **kw)
    np.testing.assert_allclose(om, rm, atol=1e-4 * max(1.0, np.abs(rm).max()), rtol=0)


def test_batched_boxes_predict_torch(predictors):
    rp, op, image = predictors
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, w / 2, 8)
    y0 = rng.uniform(0, h / 2, 8)
    boxes = np.stack([x0, y0, x0 + rng.uniform(10, w / 2, 8), y0 + rng.uniform(10, h / 2, 8)], axis=1)
    rb = rp.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    ob = op.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    with torch.no_grad():
        rm, ri, rl = rp.predict_torch(None, None, boxes=rb, multimask_output=True)
    om, oi, ol = op.predict_torch(None, None, boxes=ob, multimask_output=True)
    _compare((rm.numpy(), ri.numpy(), rl.numpy()), (om.numpy(), oi.numpy(), ol.numpy()))


def test_sam_forward_parity():
    """The end-to-end ``Sam.forward`` batched-input format matches the reference."""
    ref, ours = _pair("tiny", _ref_tiny)
    img = torch.as_tensor(_image(256, 192)).permute(2, 0, 1).float()
    batch = [{
        "image": img, "original_size": (256, 192),
        "point_coords": torch.tensor([[[50.0, 60.0]]]), "point_labels": torch.tensor([[1]]),
    }]
    with torch.no_grad():
        r = ref(batch, multimask_output=True)[0]
    o = ours(batch, multimask_output=True)[0]
    np.testing.assert_allclose(o["low_res_logits"].numpy(), r["low_res_logits"].numpy(), atol=1e-4, rtol=0)
    assert (o["masks"] == r["masks"]).float().mean() >= 0.9999
