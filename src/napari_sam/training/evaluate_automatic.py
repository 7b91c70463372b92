"""How well an automatic method segments a held-out set: F1 of matched objects at IoU 0.5.

A found object matches a true object when their IoU exceeds ``threshold`` (at 0.5
or above a match is one-to-one). Counts are pooled over the images:
``F1 = 2 TP / (n_true + n_found)``, precision ``TP / n_found``, recall ``TP / n_true``.

Also here: the classical baseline the automatic modes must beat
(:func:`classical_labels`: Gaussian blur, Otsu threshold, distance-transform watershed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .datasets import check_pair


def matched_pairs(truth: np.ndarray, found: np.ndarray, threshold: float = 0.5) -> int:
    """Number of (true, found) object pairs with IoU > ``threshold`` (``threshold`` >= 0.5: one-to-one).

    Args:
        truth, found: (H, W) integer instance labels, 0 = background.
    """
    if threshold < 0.5:
        raise ValueError("matching by IoU is one-to-one only for thresholds >= 0.5.")
    tu, t = np.unique(np.asarray(truth), return_inverse=True)
    fu, f = np.unique(np.asarray(found), return_inverse=True)
    inter = np.bincount(t.ravel() * fu.size + f.ravel(), minlength=tu.size * fu.size).reshape(tu.size, fu.size)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = (inter / np.maximum(union, 1))[tu != 0][:, fu != 0]
    return int((iou > threshold).sum())


def object_count(labels: np.ndarray) -> int:
    """Objects in (H, W) labels (distinct non-zero ids)."""
    ids = np.unique(labels)
    return int((ids != 0).sum())


@dataclass
class AutomaticScore:
    """Pooled matching counts and the scores they give."""

    n_images: int
    n_true: int
    n_found: int
    matched: int
    seconds_per_image: float

    @property
    def f1(self) -> float:
        total = self.n_true + self.n_found
        return 2 * self.matched / total if total else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.n_found if self.n_found else float("nan")

    @property
    def recall(self) -> float:
        return self.matched / self.n_true if self.n_true else float("nan")

    def summary(self) -> dict:
        return {**asdict(self), "f1": self.f1, "precision": self.precision, "recall": self.recall}


def evaluate_automatic(segment: Callable[[np.ndarray], np.ndarray], pairs, threshold: float = 0.5) -> AutomaticScore:
    """Score ``segment`` ((H, W) image -> (H, W) labels) on ``pairs`` of (image, labels)."""
    import time

    n_true = n_found = matched = 0
    seconds = 0.0
    for i in range(len(pairs)):
        image, truth = check_pair(*pairs[i], name=f"pair {i}")
        t0 = time.perf_counter()
        found = np.asarray(segment(image))
        seconds += time.perf_counter() - t0
        if found.shape != truth.shape:
            raise ValueError(f"the segmenter returned {found.shape} labels for a {truth.shape} image.")
        n_true += object_count(truth)
        n_found += object_count(found)
        matched += matched_pairs(truth, found, threshold)
    n = len(pairs)
    return AutomaticScore(n, n_true, n_found, matched, seconds / n if n else float("nan"))


def classical_labels(image: np.ndarray, sigma: float = 1.0, min_distance: int = 4) -> np.ndarray:
    """The classical baseline: Gaussian blur, Otsu threshold, distance-transform watershed.

    (H, W) or (H, W, C) image -> (H, W) int32 labels; seeds are the local maxima of the
    distance to the background at least ``min_distance`` pixels apart.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    img = gaussian(img, sigma, preserve_range=True)
    if float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.int32)
    mask = img > threshold_otsu(img)
    dist = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndimage.label(mask)[0], exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


__all__ = ["AutomaticScore", "classical_labels", "evaluate_automatic", "matched_pairs", "object_count"]
