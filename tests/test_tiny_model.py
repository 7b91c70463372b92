"""The bundled ``tiny`` weights segment synthetic cells from one click (skipped if the file is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_sam

WEIGHTS = Path(napari_sam.__file__).parent / "weights" / "tiny.pt"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="bundled weights src/napari_sam/weights/tiny.pt not built")


@pytest.fixture(scope="module")
def predictor():
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.engine.models.zoo import load_model

    return SamPredictor(load_model("tiny", device="cpu"))


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _pair_image(touching: bool):
    """Two cells side by side (touching or apart) of equal brightness, uint16, with labels."""
    from skimage.draw import ellipse
    from skimage.filters import gaussian
    from skimage.segmentation import find_boundaries

    lab = np.zeros((160, 200), np.int32)
    gap = 0 if touching else 20
    rr, cc = ellipse(80, 70, 30, 34, lab.shape)
    lab[rr, cc] = 1
    rr, cc = ellipse(80, 70 + 64 + gap, 30, 34, lab.shape)
    keep = lab[rr, cc] == 0
    lab[rr[keep], cc[keep]] = 2
    signal = (lab > 0) * 1.0
    signal[find_boundaries(lab, mode="inner") & (lab > 0)] = 0.6
    img = gaussian(signal, 1.5) * 2000 + 150
    img = np.random.default_rng(0).poisson(img).astype(np.uint16)
    return img, lab


def test_click_on_cell_gives_that_cell(predictor, cells_image):
    from napari_sam.training.evaluate import centre_point

    img, lab = cells_image
    predictor.set_image(img)
    for obj in range(1, lab.max() + 1):
        gt = lab == obj
        r, c = centre_point(gt)
        masks, scores, _ = predictor.predict(np.array([[c, r]], float), np.array([1]))
        assert _iou(masks[int(np.argmax(scores))], gt) > 0.8, obj


def test_box_gives_that_cell(predictor, cells_image):
    from napari_sam.training.evaluate import tight_box

    img, lab = cells_image
    predictor.set_image(img)
    for obj in range(1, lab.max() + 1):
        gt = lab == obj
        masks, _, _ = predictor.predict(box=tight_box(gt), multimask_output=False)
        assert _iou(masks[0], gt) > 0.8, obj


def test_negative_click_removes_touching_neighbour(predictor):
    from napari_sam.training.evaluate import centre_point, tight_box

    img, lab = _pair_image(touching=True)
    a, b = lab == 1, lab == 2
    predictor.set_image(img)
    both = tight_box(a | b)
    (ra, ca), (rb, cb) = centre_point(a), centre_point(b)
    masks, _, _ = predictor.predict(box=both, multimask_output=False)
    assert (masks[0] & b).sum() / b.sum() > 0.5  # the box over both takes in the neighbour
    masks, _, _ = predictor.predict(
        point_coords=np.array([[ca, ra], [cb, rb]], float), point_labels=np.array([1, 0]), box=both,
        multimask_output=False,
    )
    assert (masks[0] & b).sum() / b.sum() < 0.2
    assert _iou(masks[0], a) > 0.7


def test_bf16_gives_the_fp32_cells(cells_image, monkeypatch):
    """With trained weights, reduced precision (encoder and decoder in bf16) picks the same cells:
    each click's mask agrees with the fp32 one (random-weight agreement is in test_decoder_paths)."""
    from napari_sam.engine.models import device as device_mod
    from napari_sam.engine.prediction.predictor import SamPredictor
    from napari_sam.engine.models.zoo import load_model
    from napari_sam.training.evaluate import centre_point

    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    model = load_model("tiny", device="cpu")
    p32, p16 = SamPredictor(model, precision="fp32"), SamPredictor(model, precision="bf16")
    img, lab = cells_image
    p32.set_image(img)
    p16.set_image(img)
    assert p16.decoder_dtype is not None
    for obj in range(1, lab.max() + 1):
        r, c = centre_point(lab == obj)
        kw = dict(point_coords=np.array([[c, r]], float), point_labels=np.array([1]))
        m32, s32, _ = p32.predict(**kw)
        m16, s16, _ = p16.predict(**kw)
        assert _iou(m16[int(np.argmax(s16))], m32[int(np.argmax(s32))]) > 0.95, obj


def test_automatic_segmentation_in_bf16_reuses_the_decoder_copy_and_finds_the_fp32_objects(cells_image, monkeypatch):
    """Automatic segmentation with a bf16 model hands the decoder the predictor's cached bf16
    channels-last embedding (made once per image, not cast per prompt batch) and finds the same cells."""
    from napari_sam.engine.models import device as device_mod
    from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator
    from napari_sam.engine.models.device import InferenceOptions
    from napari_sam.engine.models.zoo import load_model

    import torch

    monkeypatch.setattr(device_mod, "_cpu_has_fast_bf16", lambda: True)
    img, _ = cells_image
    kw = dict(points_per_side=16, points_per_batch=64, pred_iou_thresh=0.8, stability_score_thresh=0.9)
    fp32 = SamAutomaticMaskGenerator(load_model("tiny", device="cpu"), **kw,
                                     options=InferenceOptions.resolve("cpu", "fp32"))
    bf16 = SamAutomaticMaskGenerator(load_model("tiny", device="cpu"), **kw,
                                     options=InferenceOptions.resolve("cpu", "bf16"))
    assert bf16.predictor.decoder_dtype == torch.bfloat16

    seen = []
    decoder = bf16.predictor.model.mask_decoder
    attend = decoder.attend

    def recording_attend(image_embedding, *args, **kwargs):
        seen.append(image_embedding)
        return attend(image_embedding, *args, **kwargs)

    monkeypatch.setattr(decoder, "attend", recording_attend)
    lab16 = bf16.generate_labels(img)
    lab32 = fp32.generate_labels(img)
    assert len(seen) == 4  # 256 points in batches of 64
    shared = seen[0]  # one copy made for the image, read by every batch
    assert all(t is shared for t in seen) and shared.dtype == torch.bfloat16
    assert shared.is_contiguous(memory_format=torch.channels_last)
    assert lab32.max() >= 2 and abs(int(lab16.max()) - int(lab32.max())) <= 1
    assert ((lab16 > 0) == (lab32 > 0)).mean() > 0.99


def test_large_magnitude_images_segment_like_the_original(cells_image):
    """float64 with a 1e12 offset and int64/uint64 near the dtype maximum: IoU against the drawn cells."""
    from napari_sam.engine.prediction.segmenter import Segmenter
    from napari_sam.training.evaluate import centre_point

    img, lab = cells_image
    b = img.astype(np.int64)
    variants = {
        "float64 + 1e12": img.astype(np.float64) + 1e12,
        "int64 near max": b + (np.iinfo(np.int64).max - 70_000),
        "uint64 near max": img.astype(np.uint64) + np.uint64(np.iinfo(np.uint64).max - 70_000),
    }
    seg = Segmenter("tiny", device="cpu")
    for name, big in variants.items():
        seg.set_image(big)
        for obj in range(1, lab.max() + 1):
            gt = lab == obj
            mask = seg.segment(points=[centre_point(gt)])
            assert _iou(mask, gt) > 0.8, (name, obj)
