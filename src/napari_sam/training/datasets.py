"""Training pairs: an image and its instance labels, validated and turned into model input.

A pair is ``(image, labels)``: image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
of any numeric dtype (as ``SamPredictor.set_image`` accepts); labels (H, W)
of an integer dtype, 0 = background, each other value one object.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidImageError, TrainingError
from ..engine.images.normalize import to_uint8_rgb
from ..model.transforms import ResizeLongestSide, get_preprocess_shape

TIFF_SUFFIXES = (".tif", ".tiff")
#: image files read for training (the inputs of the other commands); labels must be lossless (no JPEG)
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")
LABEL_FILE_SUFFIXES = (*TIFF_SUFFIXES, ".png")
# label file name endings tried when matching an image ``name.tif`` with its labels
LABEL_SUFFIXES = ("", "_labels", "_label", "_masks", "_mask", "_seg", "_gt")


def check_pair(image, labels, name: str = "pair") -> tuple[np.ndarray, np.ndarray]:
    """Validate one pair; return (image, labels) as arrays. Raises :class:`TrainingError`."""
    image, labels = np.asarray(image), np.asarray(labels)
    try:
        from ..engine.images.normalize import check_image

        check_image(image)
    except InvalidImageError as e:
        raise TrainingError(f"{name}: {e}") from e
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
        raise TrainingError(
            f"{name}: labels have dtype {labels.dtype}; instance labels must be integers "
            "(0 = background, one value per object)."
        )
    if labels.ndim != 2:
        raise TrainingError(f"{name}: labels of shape {labels.shape} are not 2D (H, W).")
    if tuple(image.shape[:2]) != tuple(labels.shape):
        raise TrainingError(
            f"{name}: image shape {image.shape} and labels shape {labels.shape} differ; "
            "labels must cover the image pixel for pixel."
        )
    if not (labels > 0).any():
        raise TrainingError(f"{name}: the labels contain no objects (all 0); remove this pair or annotate it.")
    return image, labels


def pairs_from_arrays(images, labels) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated pairs from sequences of arrays, or from stacks (N, H, W[, C]) and (N, H, W).

    Layers' data arrays (``layer.data``) are arrays too: pass them directly.
    A single 2D image with 2D labels gives one pair.
    """
    if not isinstance(labels, (list, tuple)):
        lab = np.asarray(labels)
        if lab.ndim == 2:
            images, labels = [images], [lab]
        elif lab.ndim == 3:
            labels = list(lab)
            images = list(images) if isinstance(images, (list, tuple)) else list(np.asarray(images))
        else:
            raise TrainingError(f"Labels of shape {lab.shape}: expected (H, W), a stack (N, H, W) or a list.")
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise TrainingError(f"Got {len(images)} images but {len(labels)} label images; they must pair up.")
    if not images:
        raise TrainingError("No training pairs given.")
    return [check_pair(im, lb, f"pair {i}") for i, (im, lb) in enumerate(zip(images, labels))]


def _image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _read(path: Path) -> np.ndarray:
    from ..engine.images.io import open_image

    return np.asarray(open_image(path).data)


def _match_label_file(image: Path, by_stem: dict[str, Path]) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        if image.stem + suffix in by_stem:
            return by_stem[image.stem + suffix]
    return None


def pairs_from_folders(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated pairs from two folders of images (TIFF, PNG or JPEG; labels TIFF or PNG), matched by name.

    ``images/a.tif`` pairs with ``labels/a.tif`` (or ``a_labels.tif``, ``a_masks.tif``, ...).
    Images without labels are an error, so nothing is silently left out.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not d.is_dir():
            raise TrainingError(f"The {what} folder {d} does not exist.")
    image_files = _image_files(images_dir)
    if not image_files:
        raise TrainingError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in the images folder {images_dir}.")
    label_files = {p.stem: p for p in _image_files(labels_dir, LABEL_FILE_SUFFIXES)}
    if not label_files:
        raise TrainingError(f"No label images ({', '.join(LABEL_FILE_SUFFIXES)}) in the labels folder {labels_dir}.")
    pairs, unmatched = [], []
    for f in image_files:
        lf = _match_label_file(f, label_files)
        if lf is None:
            unmatched.append(f.name)
            continue
        pairs.append(check_pair(_read(f), _read(lf), f.name))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise TrainingError(
            f"No labels in {labels_dir} for {len(unmatched)} image(s): {shown}. "
            f"Name label files like the image ({'/'.join('<name>' + s + '.tif' for s in LABEL_SUFFIXES[:3])})."
        )
    return pairs


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) labels to ``size`` (h, w), sampling at pixel centres."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def prepare_pair(image: np.ndarray, labels: np.ndarray, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The model input of a pair, exactly as ``SamPredictor.set_image`` builds it.

    Returns:
        rgb (h, w, 3) uint8 resized so the longest side is ``img_size``, and
        labels (h, w) int64 resized (nearest) to the same frame.
    """
    rgb = to_uint8_rgb(image)
    resized = ResizeLongestSide(img_size).apply_image(rgb)
    size = get_preprocess_shape(labels.shape[0], labels.shape[1], img_size)
    return resized, resize_labels(labels.astype(np.int64, copy=False), size)


def augment_pair(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Random flips and 90 degree rotations of (H, W[, C]) image and (H, W) labels together."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k, axes=(0, 1)), np.rot90(labels, k, axes=(0, 1))
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def as_pair_source(pairs) -> Sequence:
    """Anything indexable giving (image, labels); a list of pairs is checked for emptiness."""
    if hasattr(pairs, "__len__") and len(pairs) == 0:
        raise TrainingError("No training pairs given (empty dataset).")
    return pairs
