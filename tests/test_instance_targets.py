"""Training targets of the instance decoder: definitions, and parity with torch_em's
``PerObjectDistanceTransform`` as micro-sam's training configures it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.training.instance_targets import instance_targets
from napari_sam.training.synthetic_nuclei import nuclei_sample


def test_a_disc_has_its_centre_at_zero_and_its_rim_at_one():
    from skimage.draw import disk

    lab = np.zeros((41, 41), np.int32)
    lab[disk((20, 20), 12)] = 5
    fg, cd, bd = instance_targets(lab)
    assert fg.dtype == np.float32 and set(np.unique(fg)) == {0.0, 1.0}
    assert cd[20, 20] == 0 and bd[20, 20] == 0
    inside = lab > 0
    assert cd[inside].max() == pytest.approx(1, abs=1e-6) and bd[inside].max() == pytest.approx(1, abs=1e-6)
    assert np.all(cd[~inside] == 1) and np.all(bd[~inside] == 1)
    assert cd[20, 28] > cd[20, 24] and bd[20, 31] > bd[20, 24]  # grow outwards


def test_pieces_and_min_size():
    lab = np.zeros((20, 40), np.int32)
    lab[2:8, 2:8] = 1
    lab[12:18, 30:36] = 1  # a second piece of the same label: its own object
    lab[0:2, 38:40] = 2  # 4 pixels
    fg, cd, _ = instance_targets(lab, min_size=5)
    assert fg[0:2, 38:40].sum() == 0
    assert cd[4, 4] == 0 and cd[14, 32] == 0  # each piece has its own centre (centroid 4.5 -> 4, half to even)


def test_bad_labels():
    with pytest.raises(ValueError, match="2D integer"):
        instance_targets(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("seed, min_size", [(0, 0), (2, 25), (5, 0)])
def test_parity_with_torch_em(seed, min_size):
    label_mod = pytest.importorskip("torch_em.transform.label", reason="torch-em is not installed")
    _, lab = nuclei_sample(seed, (160, 200))
    ref = label_mod.PerObjectDistanceTransform(
        distances=True, boundary_distances=True, directed_distances=False, foreground=True, instances=False,
        min_size=min_size,
    )(lab)
    got = instance_targets(lab, min_size=min_size)
    assert ref.shape == got.shape == (3, 160, 200)
    assert np.abs(ref - got).max() < 1e-5
