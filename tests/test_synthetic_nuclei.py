"""The widefield-like synthetic nuclei generator: determinism, label validity, and the features
it promises (touching and overlapping clusters, a range of sizes, dim nuclei, additive overlaps)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.training.synthetic_nuclei import nuclei_labels, nuclei_sample, render_nuclei


def test_deterministic_and_well_formed():
    a_img, a_lab = nuclei_sample(3, (200, 240))
    b_img, b_lab = nuclei_sample(3, (200, 240))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert a_img.dtype == np.uint16 and a_img.shape == (200, 240)
    assert a_lab.dtype == np.int32 and a_lab.shape == (200, 240)
    n = int(a_lab.max())
    assert n > 0 and np.array_equal(np.unique(a_lab), np.arange(n + 1))
    for i, sl in enumerate(ndi.find_objects(a_lab), 1):
        assert ndi.label(a_lab[sl] == i)[1] == 1, "every nucleus is one connected piece"
    assert not np.array_equal(nuclei_sample(4, (200, 240))[0], a_img)


@pytest.fixture(scope="module")
def samples():
    return [nuclei_sample(s, (256, 256)) for s in range(6)]


def test_touching_nuclei_and_a_range_of_sizes(samples):
    touching_pairs = 0
    for _, lab in samples:
        grown = ndi.grey_dilation(lab, size=3)
        touching_pairs += len({(int(a), int(b)) for a, b in zip(lab[(lab > 0) & (grown != lab)],
                                                                 grown[(lab > 0) & (grown != lab)]) if b > 0})
        areas = np.bincount(lab.ravel())[1:]
        assert np.percentile(areas, 90) / np.percentile(areas, 10) > 2.0
    assert touching_pairs >= 10


def test_dim_and_bright_nuclei(samples):
    ratios = []
    for img, lab in samples:
        bg = np.median(img[lab == 0])
        means = ndi.mean(img.astype(float) - bg, lab, np.arange(1, lab.max() + 1))
        ratios.append(np.percentile(means, 95) / max(np.percentile(means, 5), 1.0))
    assert max(ratios) > 5.0


def test_overlaps_add_both_signals():
    """Where two drawn nuclei overlap, the image is brighter than where only one lies."""
    more, total = 0, 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        labels, footprints, depth = nuclei_labels((256, 256), rng)
        cover = np.zeros(labels.shape, int)
        for rr, cc in footprints:
            cover[rr, cc] += 1
        if (cover >= 2).sum() < 30:
            continue
        img = render_nuclei(labels, footprints, depth, rng).astype(float)
        total += 1
        more += img[cover >= 2].mean() > img[cover == 1].mean()
    assert total >= 3 and more == total


def test_pairs_are_seeded_and_the_held_out_seed_gives_other_images():
    from napari_sam.training.synthetic_nuclei import NucleiPairs

    train, again = NucleiPairs(6, seed=0, cells_fraction=0.3), NucleiPairs(6, seed=0, cells_fraction=0.3)
    held_out = NucleiPairs(6, seed=12345, cells_fraction=0.3)
    for i in range(len(train)):
        (a_img, a_lab), (b_img, b_lab) = train[i], again[i]
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
        assert a_lab.max() > 0
        # the labels describe the image: objects are brighter than the background around them
        assert np.median(a_img[a_lab > 0]) > np.median(a_img[a_lab == 0])
    train_images = {train[i][0].tobytes() for i in range(6)}
    assert not train_images & {held_out[i][0].tobytes() for i in range(6)}
    kinds = [NucleiPairs(200, seed=0, cells_fraction=0.3).kind(i) for i in range(200)]
    assert 30 <= kinds.count("cells") <= 90
    assert all(k == "nuclei" for k in (NucleiPairs(50, seed=0).kind(i) for i in range(50)))
    with pytest.raises(IndexError):
        train[6]
    with pytest.raises(ValueError, match="cells_fraction"):
        NucleiPairs(3, cells_fraction=1.5)
