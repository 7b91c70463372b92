"""SamPredictor beyond parity: microscopy inputs, precomputed embeddings, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor
from napari_sam.engine.images.normalize import to_uint8_rgb
from napari_sam.errors import ImageNotSetError, InvalidImageError, InvalidPromptError


@pytest.fixture()
def predictor(tiny_model):
    return SamPredictor(tiny_model)


def test_grayscale_uint16_float_and_rgba_inputs(predictor, cells_image):
    img, _ = cells_image
    predictor.set_image(img)  # uint16 grayscale
    e16 = predictor.get_image_embedding().clone()
    predictor.set_image(img.astype(np.float32) / 7.0)  # float, same shape up to scale
    ef = predictor.get_image_embedding()
    # a linear rescale does not change the percentile-normalised input
    np.testing.assert_allclose(ef.numpy(), e16.numpy(), atol=1e-4)
    rgba = np.dstack([to_uint8_rgb(img), np.full(img.shape, 255, np.uint8)])
    predictor.set_image(rgba)
    np.testing.assert_allclose(predictor.get_image_embedding().numpy(), e16.numpy(), atol=1e-4)
    masks, scores, logits = predictor.predict(np.array([[60.0, 50.0]]), np.array([1]))
    assert masks.shape == (3, *img.shape) and masks.dtype == bool
    grid = predictor.model.prompt_encoder.mask_input_size
    assert scores.shape == (3,) and logits.shape == (3, *grid)


def test_bgr_matches_reversed_rgb(predictor):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    predictor.set_image(img)
    a = predictor.get_image_embedding().clone()
    predictor.set_image(img[..., ::-1].copy(), image_format="BGR")
    torch.testing.assert_close(predictor.get_image_embedding(), a)


def test_precomputed_embedding_gives_same_masks(tiny_model, cells_image):
    img, _ = cells_image
    p1 = SamPredictor(tiny_model)
    p1.set_image(img)
    emb = p1.get_embedding()
    p2 = SamPredictor(tiny_model)
    p2.set_embedding(emb.features.numpy(), emb.original_size, emb.input_size)
    kw = dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    for a, b in zip(p1.predict(**kw), p2.predict(**kw)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidImageError, match="does not fit"):
        p2.set_embedding(np.zeros((1, 256, 64, 64), np.float32), (10, 10), (256, 256))


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((2, 3, 32, 32)), "dimensions"),
        (np.zeros((0, 10)), "empty"),
        (np.zeros((10, 10, 2)), "not 2D"),
        (np.full((10, 10), np.nan, np.float32), "NaN"),
        (np.array([[np.inf, 1.0], [2.0, 3.0]]), "NaN or infinite"),
        (np.zeros((10, 10), dtype=complex), "dtype"),
    ],
)
def test_bad_images(predictor, image, match):
    with pytest.raises(InvalidImageError, match=match):
        predictor.set_image(image)


def test_predict_before_set_image(predictor):
    with pytest.raises(ImageNotSetError, match="set_image"):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[500.0, 10.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[-3.0, 10.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[5.0, 10.0]]), point_labels=np.array([2])), "0 \\(negative\\) or 1"),
        (dict(point_coords=np.array([[5.0, 10.0], [1.0, 1.0]]), point_labels=np.array([1])), "matching"),
        (dict(point_coords=np.array([[5.0, 10.0]])), "together"),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([5.0, 10.0, 3.0]), point_labels=np.array([1])), "\\(N, 2\\)"),
        (dict(box=np.array([50.0, 10.0, 20.0, 40.0])), "x1 >= x0"),
        (dict(box=np.array([1.0, 2.0, 3.0])), "shape"),
        (dict(box=np.array([1000.0, 1000.0, 1200.0, 1200.0])), "entirely outside"),
        (dict(mask_input=np.zeros((1, 10, 10))), "mask_input must have shape"),
        (dict(), "at least one prompt"),
    ],
)
def test_bad_prompts(predictor, cells_image, kwargs, match):
    predictor.set_image(cells_image[0])
    with pytest.raises(InvalidPromptError, match=match):
        predictor.predict(**kwargs)


def test_box_partly_outside_is_clipped(predictor, cells_image):
    img, _ = cells_image
    predictor.set_image(img)
    a = predictor.predict(box=np.array([-20.0, -30.0, 100.0, 90.0]), multimask_output=False)
    b = predictor.predict(box=np.array([-0.5, -0.5, 100.0, 90.0]), multimask_output=False)
    np.testing.assert_array_equal(a[0], b[0])


def test_reset_image(predictor, cells_image):
    predictor.set_image(cells_image[0])
    assert predictor.is_image_set
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(ImageNotSetError):
        predictor.get_image_embedding()
