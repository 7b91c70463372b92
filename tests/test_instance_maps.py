"""Instance labels from decoder maps: the seeded watershed, its edge cases, and parity with
micro-sam's post-processing (torch_em's ``watershed_from_center_and_boundary_distances``).

The maps are drawn from known objects (touching ellipses): foreground, per-object normalised
distance to the centre, inverted distance to the boundary, blurred, with noise; so a correct
post-processing must give back the drawn objects, touching ones separated.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from object_maps import object_maps

from napari_sam.engine.automatic.instance_maps import (
    InstanceMapSettings,
    labels_from_maps,
    remove_small_objects,
    smooth,
)
from napari_sam.errors import InvalidParameterError


def _draw(shape, n, seed, radii=(6, 25)):
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        r, c = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        rr, cc = ellipse(r, c, rng.integers(*radii), rng.integers(*radii), shape=shape, rotation=rng.uniform(0, 3))
        lab[rr, cc] = i
    return remove_small_objects(lab, 20)


def _maps(lab, seed=0, noise=0.1, blur=1.5):
    """Decoder-like maps of a label image (what a trained decoder is taught to predict), blurred, with noise."""
    rng = np.random.default_rng(seed)

    def noisy(a):
        return np.clip(ndi.gaussian_filter(a, blur) + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)

    return tuple(noisy(a) for a in object_maps(lab))


def _matched_iou(truth, pred):
    """Mean IoU of each true object with its best predicted object."""
    ious = []
    for i in range(1, truth.max() + 1):
        t = truth == i
        ids, counts = np.unique(pred[t], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if not ids.size:
            ious.append(0.0)
            continue
        p = pred == ids[np.argmax(counts)]
        ious.append((t & p).sum() / (t | p).sum())
    return float(np.mean(ious))


def test_recovers_drawn_objects_and_splits_touching_ones():
    lab = _draw((256, 256), 40, seed=0)
    n_true = len(np.unique(lab)) - 1
    touching = ndi.binary_dilation(lab > 0) & ~(lab > 0)  # sanity: the scene has touching objects
    assert (ndi.label(lab > 0)[1]) < n_true and touching.any()
    got = labels_from_maps(*_maps(lab))
    assert got.dtype == np.int32 and got.shape == lab.shape
    assert abs(got.max() - n_true) <= 1
    assert _matched_iou(lab, got) > 0.85
    assert np.array_equal(np.unique(got), np.arange(got.max() + 1))  # consecutive ids


def test_all_background_gives_empty_labels():
    z = np.zeros((64, 80), np.float32)
    got = labels_from_maps(z, np.ones_like(z), np.ones_like(z))
    assert got.shape == (64, 80) and got.dtype == np.int32 and not got.any()


def test_one_object_filling_the_slice():
    lab = np.ones((60, 70), np.int32)
    got = labels_from_maps(*_maps(lab, noise=0.02))
    assert got.max() == 1 and (got == 1).mean() > 0.99


def test_min_size_removes_small_objects_and_renumbers():
    lab = _draw((200, 200), 30, seed=4, radii=(4, 20))
    maps = _maps(lab, seed=1)
    all_objects = labels_from_maps(*maps)
    sizes = np.bincount(all_objects.ravel())[1:]
    cut = int(np.median(sizes))
    big = labels_from_maps(*maps, InstanceMapSettings(min_size=cut))
    assert big.max() == int((sizes >= cut).sum())
    assert np.array_equal(np.unique(big), np.arange(big.max() + 1))
    assert np.array_equal(big > 0, np.isin(all_objects, np.flatnonzero(sizes >= cut) + 1))


@pytest.mark.parametrize(
    "kwargs",
    [{"center_distance_threshold": 1.5}, {"foreground_threshold": float("nan")}, {"distance_smoothing": -1},
     {"min_size": -3}, {"min_size": 2.5}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidParameterError):
        InstanceMapSettings(**kwargs)


def test_bad_maps_are_refused():
    z = np.zeros((10, 10), np.float32)
    with pytest.raises(InvalidParameterError, match="one shape"):
        labels_from_maps(z, z, np.zeros((10, 11), np.float32))
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidParameterError, match="NaN"):
        labels_from_maps(z, bad, z)


# --- parity with micro-sam's post-processing ------------------------------------------------------

def _micro_sam_postprocessing():
    ws = pytest.importorskip(
        "torch_em.util.segmentation", reason="torch-em (micro-sam's post-processing) is not installed"
    )
    import bioimage_cpp as bic

    def run(fg, cd, bd, s: InstanceMapSettings):
        # micro-sam's InstanceSegmentationWithDecoder.generate without tiling:
        if s.foreground_smoothing > 0:
            fg = bic.filters.gaussian_smoothing(fg, sigma=s.foreground_smoothing)
        return ws.watershed_from_center_and_boundary_distances(
            center_distances=cd, boundary_distances=bd, foreground_map=fg,
            center_distance_threshold=s.center_distance_threshold,
            boundary_distance_threshold=s.boundary_distance_threshold,
            foreground_threshold=s.foreground_threshold, distance_smoothing=s.distance_smoothing,
            min_size=s.min_size,
        )

    return run, bic


@pytest.mark.parametrize("sigma", [1.0, 1.2, 1.4, 1.6, 2.0])
def test_smoothing_equals_bioimage_cpp(sigma):
    _, bic = _micro_sam_postprocessing()
    a = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    assert np.abs(smooth(a, sigma) - bic.filters.gaussian_smoothing(a, sigma)).max() < 1e-6


@pytest.mark.parametrize(
    "shape, n, seed, settings",
    [
        ((256, 256), 40, 0, InstanceMapSettings()),
        ((300, 200), 60, 1, InstanceMapSettings(min_size=50)),
        ((512, 384), 150, 3, InstanceMapSettings(0.4, 0.5, 0.5, 1.0, 2.0, 100)),  # micro-sam's vit_b_lm widget values
        ((256, 256), 50, 5, InstanceMapSettings(0.3, 0.4, 0.5, 0.0, 1.2, 0)),
    ],
)
def test_parity_with_micro_sam(shape, n, seed, settings):
    """Same objects, same numbering; at most 1e-4 of the pixels (quantisation ties on borders) differ."""
    run_reference, _ = _micro_sam_postprocessing()
    maps = _maps(_draw(shape, n, seed), seed=seed)
    expected = run_reference(*maps, settings).astype(np.int64)
    got = labels_from_maps(*maps, settings)
    assert got.max() == expected.max() > 5
    assert np.array_equal(got > 0, expected > 0)
    assert (got != expected).mean() <= 1e-4
