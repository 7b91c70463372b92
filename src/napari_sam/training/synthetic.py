"""Synthetic fluorescence microscopy images with their instance labels.

Used to train and evaluate the bundled ``tiny`` model and in tests. Every
image is fully determined by its seed. Objects are deformed ellipses (nuclei:
small, round, sparse to dense; cells: larger, irregular, often touching),
painted only onto background so neighbours touch without splitting each
other. The image is per-object intensity with texture, a darker seam at
borders between objects, blur, uneven background, Poisson shot noise and
Gaussian read noise, as uint16.
"""

from __future__ import annotations

import numpy as np

KINDS = ("nuclei", "cells")


def _blob_polygon(rng: np.random.Generator, centre, radius: float, elongation: float, irregularity: float):
    """(rows, cols) vertices of a deformed ellipse around ``centre``."""
    n = 48
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4, 5):
        r += irregularity * rng.normal(0, 1.0 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.5, 1.6) * radius
    a, b = r * elongation, r / elongation
    rot = rng.uniform(0, np.pi)
    y, x = a * np.cos(theta), b * np.sin(theta)
    rows = centre[0] + y * np.cos(rot) - x * np.sin(rot)
    cols = centre[1] + y * np.sin(rot) + x * np.cos(rot)
    return rows, cols


def synthetic_labels(
    shape: tuple[int, int], rng: np.random.Generator, kind: str = "nuclei", max_objects: int = 60
) -> np.ndarray:
    """(H, W) int32 instance labels (0 = background, 1..N objects) of ``kind`` nuclei or cells."""
    from skimage.draw import polygon

    h, w = shape
    labels = np.zeros(shape, np.int32)
    side = min(h, w)
    if kind == "nuclei":
        radius = rng.uniform(0.025, 0.09) * side
        irregularity, elong_max, overlap_ok = rng.uniform(0.0, 0.25), 1.6, rng.uniform(0.0, 0.25)
    else:
        radius = rng.uniform(0.05, 0.16) * side
        irregularity, elong_max, overlap_ok = rng.uniform(0.15, 0.5), 2.0, rng.uniform(0.1, 0.45)
    density = rng.uniform(0.15, 0.75)  # fraction of the area to fill
    target = min(max_objects, max(1, int(density * h * w / (np.pi * radius**2))))
    n = 0
    for _ in range(target * 4):
        if n >= target:
            break
        r = radius * rng.uniform(0.6, 1.4)
        centre = (rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w)
        rows, cols = _blob_polygon(rng, centre, r, rng.uniform(1.0, elong_max), irregularity)
        rr, cc = polygon(rows, cols, shape)
        if rr.size < 12:
            continue
        taken = labels[rr, cc] > 0
        if taken.mean() > overlap_ok:
            continue
        n += 1
        labels[rr[~taken], cc[~taken]] = n
    return _drop_fragments(labels)


def _drop_fragments(labels: np.ndarray, min_area: int = 12) -> np.ndarray:
    """Keep each object's largest connected piece, drop tiny objects, renumber 1..N."""
    from scipy import ndimage

    out = np.zeros_like(labels)
    n = 0
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == idx
        comp, k = ndimage.label(obj)
        if k > 1:
            sizes = np.bincount(comp.ravel())[1:]
            obj = comp == (1 + int(np.argmax(sizes)))
        if obj.sum() < min_area:
            continue
        n += 1
        out[sl][obj] = n
    return out


def render_fluorescence(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint16 fluorescence image of instance ``labels`` (shape (H, W), int)."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    h, w = labels.shape
    n = int(labels.max())
    levels = np.concatenate([[0.0], rng.lognormal(0.0, rng.uniform(0.1, 0.6), n)])
    signal = levels[labels]
    # texture inside objects (smooth multiplicative noise) and sometimes brighter rims / darker cores
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(1.0, 3.0))
    tex /= tex.std() + 1e-6
    signal *= np.clip(1 + rng.uniform(0.0, 0.3) * tex, 0.2, None)
    # a darker seam where objects touch each other or end
    seam = find_boundaries(labels, mode="inner") & (labels > 0)
    signal[seam] *= rng.uniform(0.4, 1.0)
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.6, 2.5))
    # uneven background: a smooth gradient plus low-frequency haze
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    bg = rng.uniform(0.0, 0.25) * (1 + rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    haze = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), max(h, w) / 8)
    bg += rng.uniform(0, 0.1) * haze / (haze.std() + 1e-6)
    bright = rng.uniform(30, 3000)  # photons at unit intensity: sets the shot-noise level
    photons = rng.poisson(np.clip(signal + np.clip(bg, 0, None), 0, None) * bright).astype(np.float64)
    offset, read_noise = rng.uniform(50, 500), rng.uniform(0, 0.02) * bright + 1
    img = photons * rng.uniform(0.5, 4.0) + offset + rng.normal(0, read_noise, (h, w))
    return np.clip(img, 0, 65535).astype(np.uint16)


def synthetic_sample(
    seed: int | tuple[int, ...], shape: tuple[int, int] = (256, 256), kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One seeded synthetic sample: (image (H, W) uint16, labels (H, W) int32).

    ``kind`` is ``"nuclei"``, ``"cells"`` or ``None`` (drawn at random).
    Samples without any object are redrawn, so labels always hold objects.
    """
    rng = np.random.default_rng(seed)
    for _ in range(20):
        k = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
        labels = synthetic_labels(shape, rng, k)
        if labels.max() > 0:
            return render_fluorescence(labels, rng), labels
    raise RuntimeError("could not draw a sample with objects")  # pragma: no cover


class SyntheticPairs:
    """An endless-looking, indexable set of synthetic (image, labels) pairs: item ``i`` uses seed (seed, i)."""

    def __init__(self, length: int, seed: int = 0, shape: tuple[int, int] = (256, 256), kind: str | None = None):
        self.length, self.seed, self.shape, self.kind = int(length), int(seed), tuple(shape), kind

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return synthetic_sample((self.seed, int(i)), self.shape, self.kind)
