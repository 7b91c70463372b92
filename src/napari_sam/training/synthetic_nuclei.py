"""Synthetic fluorescence nuclei that look more like real widefield images, with their labels.

For training automatic instance segmentation (the instance decoder) and prompts on
nuclei. Compared with :mod:`napari_sam.training.synthetic`, every image has:

- a range of sizes (log-normal radii around a per-image median);
- clusters of touching and overlapping nuclei besides isolated ones; where two
  overlap, the one drawn later lies on top and owns the shared pixels in the labels,
  while the image adds both signals (overlaps look brighter, as in widefield);
- textured chromatin (fine granular texture, bright chromocentres, dark nucleoli,
  sometimes a brighter nuclear rim);
- a wide brightness range with a share of dim nuclei;
- out-of-focus blur that differs between nuclei (three focal depths);
- uneven illumination (vignetting and a gradient) and a hazy background;
- Poisson shot noise, camera offset, gain and Gaussian read noise; uint16.

Every image is fully determined by its seed.
"""

from __future__ import annotations

import numpy as np

from .synthetic import _blob_polygon, _drop_fragments


def nuclei_labels(
    shape: tuple[int, int], rng: np.random.Generator, max_objects: int = 120
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Draw nuclei.

    Returns:
        labels: (H, W) int32, the visible (top-most) nucleus of each pixel, 1..N in drawing order.
        footprints: for nucleus i (list index i - 1), its full (rows, cols), hidden parts included.
        depth: (N + 1,) int focal depth bin (0 in focus, 1, 2) of each nucleus (index 0 unused).
    """
    from skimage.draw import polygon

    h, w = shape
    side = min(h, w)
    median_r = side * rng.uniform(0.02, 0.07)
    spread = rng.uniform(0.15, 0.35)  # log-normal sigma of the radii
    density = rng.uniform(0.15, 0.6)
    target = int(min(max_objects, max(3, density * h * w / (np.pi * median_r**2))))
    n_clusters = int(rng.integers(1, 6))
    clustered = rng.uniform(0.3, 0.8)  # share of nuclei placed in clusters
    centres = np.stack([rng.uniform(0.1, 0.9, n_clusters) * h, rng.uniform(0.1, 0.9, n_clusters) * w], 1)
    max_overlap = rng.uniform(0.1, 0.35)

    labels = np.zeros(shape, np.int32)
    depth = [0]
    footprints: list[tuple[np.ndarray, np.ndarray]] = []
    n = 0
    for _ in range(target * 5):
        if n >= target:
            break
        r = median_r * float(np.exp(rng.normal(0, spread)))
        if rng.random() < clustered:
            c = centres[int(rng.integers(n_clusters))]
            centre = c + rng.normal(0, 1.8 * median_r * np.sqrt(target / n_clusters) / 3, 2)
        else:
            centre = np.array([rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w])
        rows, cols = _blob_polygon(rng, centre, r, rng.uniform(1.0, 1.5), rng.uniform(0.0, 0.2))
        rr, cc = polygon(rows, cols, shape)
        if rr.size < 12:
            continue
        taken = labels[rr, cc] > 0
        if taken.mean() > max_overlap:
            continue
        n += 1
        on_top = rng.random() < 0.5  # over or under what is already there
        if on_top:
            labels[rr, cc] = n
        else:
            labels[rr[~taken], cc[~taken]] = n
        footprints.append((rr, cc))
        depth.append(int(rng.choice(3, p=(0.6, 0.28, 0.12))))
    return labels, footprints, np.asarray(depth)


def _chromatin(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float texture factor inside nuclei (1 = plain)."""
    from scipy import ndimage

    h, w = labels.shape
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(0.7, 1.5))
    fine /= fine.std() + 1e-6
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(2.0, 4.0))
    coarse /= coarse.std() + 1e-6
    tex = 1 + rng.uniform(0.1, 0.35) * fine + rng.uniform(0.05, 0.2) * coarse
    # bright chromocentres and dark nucleoli: small spots inside nuclei
    inside = np.flatnonzero(labels.ravel() > 0)
    spots = np.zeros(h * w)
    if inside.size:
        k = int(inside.size / 150)
        spots[rng.choice(inside, size=k)] = rng.uniform(-1.0, 2.0, k)
    tex += ndimage.gaussian_filter(spots.reshape(h, w), rng.uniform(0.8, 1.6)) * 6
    return np.clip(tex, 0.15, None)


def render_nuclei(
    labels: np.ndarray, footprints: list[tuple[np.ndarray, np.ndarray]], depth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) uint16 widefield-like image of the drawn nuclei (see module docstring).

    Each nucleus's signal covers its whole footprint, so where nuclei overlap both add up.
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    h, w = labels.shape
    n = len(footprints)
    bright = rng.lognormal(0.0, rng.uniform(0.2, 0.5), n)
    dim = rng.random(n) < rng.uniform(0.05, 0.25)
    bright[dim] *= rng.uniform(0.12, 0.35, int(dim.sum()))
    texture = _chromatin(labels, rng)
    rim = find_boundaries(labels, mode="inner") & (labels > 0) if rng.random() < 0.5 else None
    rim_gain = rng.uniform(1.1, 1.5)
    blur = rng.uniform(0.5, 1.2)
    extra = (0.0, rng.uniform(1.5, 3.0), rng.uniform(3.5, 6.0))  # out-of-focus blur per depth bin
    signal = np.zeros((h, w))
    for d in range(3):
        layer = np.zeros((h, w))
        for i, (rr, cc) in enumerate(footprints):
            if depth[i + 1] == d:
                layer[rr, cc] += bright[i] * (1.0 - 0.15 * d)
        if layer.any():
            layer *= texture
            if rim is not None:
                layer[rim] *= rim_gain
            signal += ndimage.gaussian_filter(layer, float(np.hypot(blur, extra[d])))
    # uneven illumination: vignetting and a gradient, multiplicative; a hazy background
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / float(max(h, w) ** 2)
    illum = (1 - rng.uniform(0.1, 0.6) * r2 / r2.max()) * (1 + rng.uniform(-0.3, 0.3) * (yy / h - 0.5))
    haze = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), max(h, w) / 10)
    bg = rng.uniform(0.02, 0.2) + rng.uniform(0, 0.05) * haze / (haze.std() + 1e-6)
    photons_per_unit = rng.uniform(20, 1500)
    photons = rng.poisson(np.clip((signal + bg) * illum, 0, None) * photons_per_unit).astype(np.float64)
    gain, offset = rng.uniform(0.5, 4.0), rng.uniform(80, 500)
    img = photons * gain + offset + rng.normal(0, rng.uniform(1, 8), (h, w))
    return np.clip(img, 0, 65535).astype(np.uint16)


def _visible_labels(labels: np.ndarray) -> np.ndarray:
    """One connected piece per nucleus, 1..N: split-off pieces (a nucleus cut in two by one on top
    of it) and tiny remnants go to the nearest kept nucleus, so every drawn pixel stays labelled."""
    from scipy import ndimage

    kept = _drop_fragments(labels)
    lost = (labels > 0) & (kept == 0)
    if lost.any() and kept.any():
        _, (ri, ci) = ndimage.distance_transform_edt(kept == 0, return_indices=True)
        kept[lost] = kept[ri[lost], ci[lost]]
    return kept


def nuclei_sample(seed: int | tuple[int, ...], shape: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """One seeded sample: (image (H, W) uint16, labels (H, W) int32, 0 background, nuclei 1..N)."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        labels, footprints, depth = nuclei_labels(shape, rng)
        if not footprints:
            continue
        return render_nuclei(labels, footprints, depth, rng), _visible_labels(labels)
    raise RuntimeError("could not draw a sample with nuclei")  # pragma: no cover


class NucleiPairs:
    """An indexable set of seeded synthetic (image, labels) pairs, mostly widefield-like nuclei.

    Item ``i`` is a nuclei image (:func:`nuclei_sample`) or, with probability
    ``cells_fraction``, a cells image of :func:`napari_sam.training.synthetic.synthetic_sample`
    (larger, irregular objects, so prompts keep working beyond nuclei). Everything is
    determined by (``seed``, ``i``): use one seed for training and another for a held-out set.
    """

    def __init__(self, length: int, seed: int = 0, shape: tuple[int, int] = (256, 256), cells_fraction: float = 0.0):
        if not 0.0 <= cells_fraction <= 1.0:
            raise ValueError(f"cells_fraction must lie in [0, 1], got {cells_fraction}.")
        self.length, self.seed, self.shape = int(length), int(seed), tuple(shape)
        self.cells_fraction = float(cells_fraction)

    def __len__(self) -> int:
        return self.length

    def kind(self, i: int) -> str:
        """``"nuclei"`` or ``"cells"``: what item ``i`` holds."""
        draw = np.random.default_rng([self.seed, 101, int(i)]).random()
        return "cells" if draw < self.cells_fraction else "nuclei"

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        if self.kind(i) == "cells":
            from .synthetic import synthetic_sample

            return synthetic_sample((self.seed, 53, int(i)), self.shape, "cells")
        return nuclei_sample((self.seed, int(i)), self.shape)


__all__ = ["NucleiPairs", "nuclei_labels", "nuclei_sample", "render_nuclei"]
