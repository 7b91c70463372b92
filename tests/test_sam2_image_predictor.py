"""SAM2ImagePredictor: same results as Meta's on the same random hiera_tiny weights (1024 px, as Meta's needs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.errors import ImageNotSetError, InvalidPromptError


@pytest.fixture(scope="module")
def state():
    from sam2_state import perturbed_sam2_state

    return perturbed_sam2_state("sam2.1_hiera_tiny")


@pytest.fixture(scope="module")
def image():
    """A 300 x 420 RGB uint8 image with a few bright blobs on noise."""
    from sam2_state import blob_image

    return blob_image((300, 420), ((80, 100, 40, 60), (200, 300, 50, 35), (220, 90, 30, 30)), seed=0)


@pytest.fixture(scope="module")
def predictors(state, image):
    """Meta's and ours, each with the image set (one encoder pass each)."""
    ref = pytest.importorskip("sam2_reference")
    from sam2.sam2_image_predictor import SAM2ImagePredictor as MetaPredictor

    from napari_sam import SAM2ImagePredictor
    from napari_sam.model.sam2 import build_sam2

    theirs = MetaPredictor(ref.build_reference("sam2.1_hiera_tiny", state, ref.IMAGE_OVERRIDES))
    ours = SAM2ImagePredictor(build_sam2("sam2.1_hiera_tiny", state))
    theirs.set_image(image)
    ours.set_image(image)
    return theirs, ours


def _low_res_prompt(predictors):
    theirs, _ = predictors
    _, scores, low = theirs.predict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    return low[np.argmax(scores)][None]


PROMPTS = {
    "one click, multimask": dict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1])),
    "clicks, single mask": dict(point_coords=np.array([[300.0, 200.0], [90.0, 220.0]]), point_labels=np.array([1, 0]),
                                multimask_output=False),
    "box": dict(box=np.array([240.0, 150.0, 350.0, 260.0]), multimask_output=False),
    "box and click": dict(box=np.array([40.0, 30.0, 170.0, 130.0]), point_coords=np.array([[100.0, 80.0]]),
                          point_labels=np.array([1]), multimask_output=False),
    "two objects, multimask": dict(point_coords=np.array([[[100.0, 80.0]], [[300.0, 200.0]]]),
                                   point_labels=np.array([[1], [1]])),
    "two boxes": dict(box=np.array([[40.0, 30.0, 170.0, 130.0], [240.0, 150.0, 350.0, 260.0]]), multimask_output=False),
}


@pytest.mark.parametrize("prompt", list(PROMPTS) + ["mask input", "mask input and click"])
def test_parity_with_meta(predictors, prompt):
    theirs, ours = predictors
    if prompt.startswith("mask input"):
        kwargs = dict(mask_input=_low_res_prompt(predictors), multimask_output=False)
        if "click" in prompt:
            kwargs.update(point_coords=np.array([[110.0, 90.0]]), point_labels=np.array([1]))
    else:
        kwargs = PROMPTS[prompt]
    m_ref, s_ref, low_ref = theirs.predict(**kwargs)
    m_our, s_our, low_our = ours.predict(**kwargs)
    assert m_our.shape == m_ref.shape and m_our.dtype == m_ref.dtype == np.float32  # 0/1, as Meta's
    assert m_ref.shape[-2:] == (300, 420)
    assert 0.001 < m_ref.mean() < 0.999  # a real mask, not an empty or full one
    assert (m_our == m_ref).mean() >= 0.999
    scale = np.abs(low_ref).max()
    np.testing.assert_allclose(low_our, low_ref, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(s_our, s_ref, atol=1e-4, rtol=0)
    logits_ref = theirs.predict(**kwargs, return_logits=True)[0]
    logits_our = ours.predict(**kwargs, return_logits=True)[0]
    np.testing.assert_allclose(logits_our, logits_ref, atol=1e-4 * np.abs(logits_ref).max(), rtol=0)


def test_embedding_matches(predictors):
    theirs, ours = predictors
    a, b = theirs.get_image_embedding(), ours.get_image_embedding()
    torch.testing.assert_close(b, a, atol=1e-4 * a.abs().max().item(), rtol=0)


def test_bad_prompts_and_state(predictors, state):
    from napari_sam import SAM2ImagePredictor
    from napari_sam.model.sam2 import build_sam2

    _, ours = predictors
    with pytest.raises(InvalidPromptError, match="together|supplied"):
        ours.predict(point_coords=np.array([[1.0, 2.0]]))
    with pytest.raises(InvalidPromptError, match=r"\(N, 2\)"):
        ours.predict(point_coords=np.array([1.0, 2.0, 3.0]), point_labels=np.array([1]))
    with pytest.raises(InvalidPromptError, match="NaN"):
        ours.predict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(InvalidPromptError, match="mask_input"):
        ours.predict(mask_input=np.zeros((1, 64, 64)))
    fresh = SAM2ImagePredictor(build_sam2("sam2.1_hiera_tiny", state, image_size=256))
    with pytest.raises(ImageNotSetError):
        fresh.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(TypeError, match="SamPredictor"):
        SAM2ImagePredictor(torch.nn.Linear(1, 1))


def test_gray_uint16_and_hole_filling(state):
    """A gray uint16 image runs (napari-sam's 8-bit rule); small holes are filled on CPU."""
    from napari_sam import SAM2ImagePredictor
    from napari_sam.engine.sam2.image_predictor import remove_small_regions
    from napari_sam.model.sam2 import build_sam2

    p = SAM2ImagePredictor(build_sam2("sam2.1_hiera_tiny", state, image_size=256))
    gray = (np.random.default_rng(1).random((100, 120)) * 4000).astype(np.uint16)
    p.set_image(gray)
    masks, scores, low = p.predict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 100, 120) and scores.shape == (3,) and low.shape == (3, 64, 64)
    logits = torch.full((1, 1, 10, 10), 5.0)
    logits[0, 0, 4:6, 4:6] = -5.0  # a 4-pixel hole
    logits[0, 0, 0, 9] = -5.0  # and a 1-pixel one at the border (touching the edge is still a hole)
    filled = remove_small_regions(logits, 0.0, max_hole_area=4, max_sprinkle_area=0)
    assert (filled > 0).all()
    assert (remove_small_regions(logits, 0.0, max_hole_area=2, max_sprinkle_area=0) <= 0).sum() == 4
