"""Decoder-like maps of known objects, for testing and timing the instance post-processing.

Used by tests/test_instance_maps.py and benchmarks/bench_ais.py (benchmarks put tests/ on ``sys.path``).
"""

from __future__ import annotations

import numpy as np


def object_maps(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a trained instance decoder predicts for ``labels`` ((H, W) ints, 0 = background), unblurred.

    Returns three (H, W) float32 maps: foreground (1 inside objects), per-object distance to the
    object's centre of mass divided by its largest (0 at the centre), and per-object inverted distance
    to the boundary divided by its largest (0 deepest inside, towards 1 at the edge); both distance
    maps are 1 outside objects.
    """
    from scipy import ndimage as ndi

    fg = (labels > 0).astype(np.float32)
    cd = np.ones(labels.shape, np.float32)
    bd = np.ones(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        m = labels[sl] == i
        dt = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        bd[sl][m] = 1 - dt[m] / dt.max()
        com = ndi.center_of_mass(m)
        yy, xx = np.indices(m.shape)
        d = np.hypot(yy - com[0], xx - com[1])
        cd[sl][m] = d[m] / max(d[m].max(), 1.0)
    return fg, cd, bd
