"""Automatic mask generation: parity with Meta's reference generator, label images, bad input.

Random weights give few, image-sized masks that box NMS collapses to one, so the
pipeline (filters, NMS, crops, edge filter, small-region clean-up, RLE) is compared
with the reference in two ways:

- with a *synthetic decoder* patched into both models: each point prompt gives
  three disc-shaped logit maps (with a hole and a small island) around the
  point, and a predicted IoU that varies from point to point; the decoder itself
  is covered by tests/test_parity_reference.py;
- with the real (random, perturbed) decoder and NMS switched off, so that many
  masks survive.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from conftest import perturbed_state_dict

segment_anything = pytest.importorskip("segment_anything")

from napari_sam.engine.automatic.amg import SamAutomaticMaskGenerator  # noqa: E402
from napari_sam.engine.automatic.amg_grid import build_all_layer_point_grids, generate_crop_boxes  # noqa: E402
from napari_sam.engine.automatic.label_image import clean_local_mask, remove_small_regions  # noqa: E402
from napari_sam.engine.automatic.mask_data import batched_mask_to_box, mask_to_rle, rle_to_mask  # noqa: E402
from napari_sam.engine.images.normalize import to_uint8_rgb  # noqa: E402
from napari_sam.errors import InvalidImageError, InvalidParameterError  # noqa: E402
from test_parity_reference import _ref_tiny  # noqa: E402


# ---- fixtures --------------------------------------------------------------------------------
def _tiny_pair(seed: int = 3):
    """Meta's modules and ours with the tiny architecture and the same perturbed weights."""
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    ref = _ref_tiny()
    sd = perturbed_state_dict(ref, seed=seed)
    ref.load_state_dict(sd)
    ours = build_sam("tiny")
    ours.load_state_dict(sd, strict=True)
    return ref.eval(), ours.eval()


def _fake_prompt_encoder(points=None, boxes=None, masks=None):
    coords, _ = points
    return coords[:, :1, :].float(), torch.zeros(coords.shape[0], 1, 1, 1)


def _frac(x: torch.Tensor) -> torch.Tensor:
    return torch.frac(torch.abs(torch.sin(x) * 43758.5453))


def _make_fake_decoder(low_res: int):
    """Three disc masks per point in low-res logits (scale 4 to the model input), with a hole and an island."""

    def forward(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        p = sparse_prompt_embeddings[:, 0, :] / 4.0  # (B, 2) x, y in low-res pixels
        px, py = p[:, 0, None, None], p[:, 1, None, None]
        yy, xx = torch.meshgrid(torch.arange(low_res, dtype=torch.float32) + 0.5,
                                torch.arange(low_res, dtype=torch.float32) + 0.5, indexing="ij")
        d = torch.sqrt((xx - px) ** 2 + (yy - py) ** 2)
        f = 1 + _frac(px * 12.9898 + py * 78.233)
        logits, ious = [], []
        for k, (r, s) in enumerate([(2.5, 3.0), (4.0, 0.8), (6.5, 2.0)]):
            lg = (r * f - d) * s
            lg = torch.where(d < 0.9 * (k == 2), torch.full_like(lg, -3.0), lg)  # a hole in the largest
            di = torch.sqrt((xx - px - r * f - 2.5) ** 2 + (yy - py) ** 2)
            lg = torch.maximum(lg, (0.9 - di) * s)  # a small island beside the disc
            logits.append(lg)
            ious.append(_frac(p[:, 0] * 3.1 + p[:, 1] * 7.7 + k)[:, None])
        logits = torch.stack(logits, 1)
        ious = torch.cat(ious, 1)
        if not multimask_output:
            return logits[:, :1], ious[:, :1]
        return logits, ious

    return forward


def _patch_fake(model, low_res: int) -> None:
    c, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    model.image_encoder.forward = lambda x: torch.zeros(x.shape[0], c, h, w)  # the fake decoder ignores it
    model.prompt_encoder.forward = _fake_prompt_encoder
    model.mask_decoder.forward = _make_fake_decoder(low_res)


@pytest.fixture(scope="module")
def fake_pair():
    ref, ours = _tiny_pair()
    low = 4 * ours.prompt_encoder.image_embedding_size[0]
    _patch_fake(ref, low)
    _patch_fake(ours, low)
    return ref, ours


@pytest.fixture(scope="module")
def real_pair():
    return _tiny_pair()


def _image(h: int = 150, w: int = 190) -> np.ndarray:
    from skimage.draw import disk

    rng = np.random.default_rng(7)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for _ in range(5):
        rr, cc = disk((rng.integers(15, h - 15), rng.integers(15, w - 15)), rng.integers(8, 25), shape=(h, w))
        img[rr, cc] = rng.integers(120, 255, 3)
    return img


@pytest.fixture()
def cv2_shim(monkeypatch):
    """The reference needs OpenCV only for connectedComponentsWithStats; give it a scipy equivalent."""
    from scipy import ndimage

    def connected(mask, connectivity):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)) if connectivity == 8 else None)
        stats = np.zeros((n + 1, 5), np.int64)
        stats[:, 4] = np.bincount(labels.ravel(), minlength=n + 1)
        return n + 1, labels.astype(np.int32), stats, None

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(connectedComponentsWithStats=connected))


def _seg(ann) -> np.ndarray:
    s = ann["segmentation"]
    return rle_to_mask(s) if isinstance(s, dict) else s


def _assert_same_masks(ref_anns, our_anns, min_iou: float = 0.99):
    assert len(our_anns) == len(ref_anns)
    if not ref_anns:
        return
    r = np.stack([_seg(a) for a in ref_anns]).reshape(len(ref_anns), -1).astype(np.float32)
    o = np.stack([_seg(a) for a in our_anns]).reshape(len(our_anns), -1).astype(np.float32)
    inter = r @ o.T
    union = r.sum(1)[:, None] + o.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    best = iou.argmax(1)
    assert iou.max(1).min() >= min_iou
    assert len(set(best.tolist())) == len(best)  # one-to-one
    for i, j in enumerate(best):
        ra, oa = ref_anns[i], our_anns[j]
        assert oa["predicted_iou"] == pytest.approx(ra["predicted_iou"], abs=1e-4)
        assert oa["stability_score"] == pytest.approx(ra["stability_score"], abs=1e-3)
        assert oa["crop_box"] == ra["crop_box"]
        np.testing.assert_allclose(oa["point_coords"], ra["point_coords"], atol=1e-6)
        if iou[i, j] == 1.0:
            assert oa["bbox"] == ra["bbox"] and oa["area"] == ra["area"]


def _both(pair, image, **kw):
    ref, ours = pair
    with torch.no_grad():
        r = segment_anything.SamAutomaticMaskGenerator(ref, **kw).generate(image)
    o = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    return r, o


# ---- parity ----------------------------------------------------------------------------------
FAKE_CASES = {
    "plain": dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.6),
    "crops": dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.5, crop_n_layers=1,
                  crop_n_points_downscale_factor=2),
    "small_regions": dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.3,
                          min_mask_region_area=60),
    "rle_no_filters": dict(points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           output_mode="uncompressed_rle", points_per_batch=7),
}


@pytest.mark.parametrize("case", sorted(FAKE_CASES))
def test_parity_synthetic_decoder(fake_pair, cv2_shim, case):
    kw = FAKE_CASES[case]
    r, o = _both(fake_pair, _image(), **kw)
    assert len(r) >= 5, "the comparison needs masks"
    _assert_same_masks(r, o)
    # same pipeline, same order: records should agree one to one
    assert [a["bbox"] for a in o] == [a["bbox"] for a in r]
    assert [a["area"] for a in o] == [a["area"] for a in r]
    if kw.get("output_mode") == "uncompressed_rle":
        assert [a["segmentation"] for a in o] == [a["segmentation"] for a in r]
    if case == "crops":
        assert len({tuple(a["crop_box"]) for a in o}) > 1
    if case == "small_regions":  # the clean-up really changed something
        raw = SamAutomaticMaskGenerator(fake_pair[1], **{**kw, "min_mask_region_area": 0}).generate(_image())
        assert sorted(a["area"] for a in raw) != sorted(a["area"] for a in o)


def test_parity_real_decoder_tiny(real_pair):
    kw = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    r, o = _both(real_pair, _image(100, 120), **kw)
    assert len(r) >= 20
    _assert_same_masks(r, o)


@pytest.mark.slow
def test_parity_real_decoder_vit_b(vit_b_pair):
    kw = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    r, o = _both(vit_b_pair, _image(240, 320), **kw)
    assert len(r) >= 10
    _assert_same_masks(r, o)


def test_precomputed_embedding_and_grayscale(fake_pair):
    _, ours = fake_pair
    gray = (np.random.default_rng(1).random((120, 140)) * 4000).astype(np.uint16)
    gen = SamAutomaticMaskGenerator(ours, points_per_side=6, pred_iou_thresh=0.2, stability_score_thresh=0.5)
    a = gen.generate(gray)
    b = gen.generate(to_uint8_rgb(gray))
    gen.predictor.set_image(gray)
    emb = gen.predictor.get_embedding()
    c = gen.generate(gray, embedding=emb)
    assert len(a) > 0 and a[0]["segmentation"].shape == (120, 140)
    for x in (b, c):
        assert [m["bbox"] for m in x] == [m["bbox"] for m in a]
    with pytest.raises(InvalidImageError, match="size"):
        gen.generate(gray[:100], embedding=emb)


# ---- label image -----------------------------------------------------------------------------
def test_generate_labels_no_overlap_contiguous(fake_pair):
    _, ours = fake_pair
    img = _image()
    gen = SamAutomaticMaskGenerator(ours, points_per_side=8, pred_iou_thresh=0.1, stability_score_thresh=0.3,
                                    box_nms_thresh=0.9)
    anns = gen.generate(img)
    labels = gen.generate_labels(img)
    assert labels.shape == img.shape[:2] and labels.dtype == np.int32
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert len(ids) > 1 and np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) <= len(anns)
    segs = np.stack([a["segmentation"] for a in anns])
    assert np.array_equal(labels > 0, segs.any(0))
    # where masks overlap, the pixel belongs to the mask with the highest predicted IoU
    ious = np.array([a["predicted_iou"] for a in anns])
    overlap = segs.sum(0) > 1
    assert overlap.any()
    for r, c in np.argwhere(overlap)[:50]:
        best = np.flatnonzero(segs[:, r, c])[np.argmax(ious[segs[:, r, c]])]
        owner = labels[r, c]
        assert segs[best][labels == owner].all()


# ---- helpers vs the reference's --------------------------------------------------------------
def test_rle_and_boxes_match_reference():
    from segment_anything.utils import amg as ref_amg

    rng = np.random.default_rng(0)
    masks = rng.random((6, 23, 31)) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, 5:9, 3:20] = True
    t = torch.as_tensor(masks)
    ref_rles = ref_amg.mask_to_rle_pytorch(t)
    for m, rr in zip(masks, ref_rles):
        rle = mask_to_rle(m)
        assert rle == rr
        assert np.array_equal(rle_to_mask(rle), m)
    assert torch.equal(batched_mask_to_box(t), ref_amg.batched_mask_to_box(t))


def test_grids_and_crops_match_reference():
    from segment_anything.utils import amg as ref_amg

    for n, layers, f in [(32, 0, 1), (10, 2, 2), (7, 1, 1)]:
        for a, b in zip(build_all_layer_point_grids(n, layers, f), ref_amg.build_all_layer_point_grids(n, layers, f)):
            assert np.array_equal(a, b)
    for size, layers in [((150, 190), 1), ((1000, 700), 2), ((64, 64), 0)]:
        assert generate_crop_boxes(size, layers, 512 / 1500) == ref_amg.generate_crop_boxes(size, layers, 512 / 1500)


def test_clean_local_mask_equals_whole_image():
    from skimage.draw import disk

    rng = np.random.default_rng(3)
    shape = (60, 80)
    for trial in range(25):
        full = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):
            rr, cc = disk(tuple(rng.integers(0, 60, 2) * [1, 80 / 60]), rng.integers(1, 12), shape=shape)
            full[rr, cc] = True
        full &= rng.random(shape) > 0.05  # pepper holes
        if not full.any():
            continue
        min_area = int(rng.integers(2, 40))
        want, _ = remove_small_regions(full, min_area, "holes")
        want, _ = remove_small_regions(want, min_area, "islands")
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        box = [cols[0], rows[0], cols[-1], rows[-1]]
        local = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        got, new_box, changed = clean_local_mask(local, box, shape, min_area)
        rebuilt = np.zeros(shape, bool)
        rebuilt[new_box[1] : new_box[1] + got.shape[0], new_box[0] : new_box[0] + got.shape[1]] = got
        assert np.array_equal(rebuilt, want), trial
        assert changed == (not np.array_equal(want, full))


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input(real_pair):
    _, ours = real_pair
    gen = SamAutomaticMaskGenerator(ours, points_per_side=2)
    with pytest.raises(InvalidImageError, match="dimensions|2D"):
        gen.generate(np.zeros((2, 3, 40, 40), np.uint8))
    with pytest.raises(InvalidImageError, match="empty"):
        gen.generate(np.zeros((0, 40, 3), np.uint8))
    with pytest.raises(InvalidImageError):
        gen.generate_labels(np.zeros((2, 3, 40, 40), np.uint8))
    with pytest.raises(InvalidParameterError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="png")
    with pytest.raises(InvalidParameterError, match="exactly one"):
        SamAutomaticMaskGenerator(ours, points_per_side=None, point_grids=None)
    with pytest.raises(InvalidParameterError, match="exactly one"):
        SamAutomaticMaskGenerator(ours, points_per_side=4, point_grids=[np.full((4, 2), 0.5)])
    with pytest.raises(InvalidParameterError, match="point_grids"):
        SamAutomaticMaskGenerator(ours, points_per_side=None, point_grids=[np.full((4, 3), 0.5)])
    with pytest.raises(InvalidParameterError, match="one per layer"):
        SamAutomaticMaskGenerator(ours, points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1)


# ---- shared-image decoding -------------------------------------------------------------------
def test_shared_image_decoding_matches_mask_decoder(real_pair):
    _, ours = real_pair
    g = torch.Generator().manual_seed(0)
    c, (h, w) = ours.prompt_encoder.embed_dim, ours.prompt_encoder.image_embedding_size
    emb = torch.randn(1, c, h, w, generator=g)
    coords = torch.rand(9, 1, 2, generator=g) * ours.image_encoder.img_size
    with torch.inference_mode():
        sparse, dense = ours.prompt_encoder(points=(coords, torch.ones(9, 1, dtype=torch.int)), boxes=None, masks=None)
        pe = ours.prompt_encoder.get_dense_pe()
        want_low, want_iou = ours.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
        iou, idx, low = ours.mask_decoder.decode_shared_image(emb, pe, sparse, dense[:1],
                                            select=lambda i: torch.tensor([1, 4, 8]))
    scale = float(want_low.abs().max())
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=0)
    assert idx.tolist() == [1, 4, 8]
    torch.testing.assert_close(low, want_low[[1, 4, 8]], atol=1e-5 * scale, rtol=0)


# ---- tiled label image -----------------------------------------------------------------------
def test_generate_labels_tiled(fake_pair):
    _, ours = fake_pair
    img = _image(150, 190)
    gen = SamAutomaticMaskGenerator(ours, points_per_side=6, pred_iou_thresh=0.1, stability_score_thresh=0.3,
                                    box_nms_thresh=0.9)
    whole = gen.generate_labels(img)
    one_tile = gen.generate_labels(img, tile_shape=(200, 200), halo=10)
    assert np.array_equal(whole, one_tile)  # a single tile is the whole image
    tiled = gen.generate_labels(img, tile_shape=(100, 120), halo=20)
    assert tiled.shape == img.shape[:2] and tiled.dtype == np.int32
    ids = np.unique(tiled)
    ids = ids[ids > 0]
    assert len(ids) > 3 and np.array_equal(ids, np.arange(1, len(ids) + 1))
    # no object is taken twice: more tiles than one, yet not more objects than the tiles found in total
    from napari_sam.engine.prediction.tiling import TileGrid

    grid = TileGrid(img.shape[:2], (100, 120), 20)
    assert len(grid) > 1
    per_tile = sum(len(gen.generate(img[t.outer_slices])) for t in grid)
    assert len(ids) < per_tile
    with pytest.raises(InvalidImageError):
        gen.generate_labels(img, tile_shape=(30, 30), halo=20)


def test_generate_iter_reports_progress(fake_pair):
    _, ours = fake_pair
    gen = SamAutomaticMaskGenerator(ours, points_per_side=6, points_per_batch=10, pred_iou_thresh=0.2,
                                    stability_score_thresh=0.5, crop_n_layers=1)
    it = gen.generate_iter(_image())
    seen = []
    try:
        while True:
            seen.append(next(it))
            assert not torch.is_inference_mode_enabled()  # no mode leaks to the caller between steps
    except StopIteration as stop:
        anns = stop.value
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total == 5 * 4  # 5 crops x ceil(36 / 10)
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert len(anns) > 0
