"""Per-slice automatic instance segmentation for batch runs and the widgets.

A *slice segmenter* is any callable ``(image) -> labels`` taking one 2D slice
((H, W) or (H, W, C) numpy) and returning (H, W) int32 instance labels
(0 = background, ids local to the slice). Batch runs accept any such callable;
by default they build one from a :class:`SliceSegmenterSpec` (model name or
checkpoint path, device/precision and :class:`~napari_sam.engine.automatic.settings.AutoSettings`),
which is small, hashable and picklable, so Dask workers can rebuild it and load the model once per
worker process (:func:`build_cached`).

:func:`label_slice_steps` is the one place a settings object's method is turned into a run
(:func:`label_segmenter_slice_steps` for a slice of a Segmenter's image, reusing its embedding):
the model's instance decoder (``"ais"``) or grid prompts (``"amg"``), tiled or not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .settings import DEFAULTS, AutoSettings

SegmentSliceFn = Callable[[np.ndarray], np.ndarray]

#: spec -> built segmenter, one per process (a Dask worker loads its model once).
_CACHE: dict["SliceSegmenterSpec", SegmentSliceFn] = {}


@dataclass(frozen=True)
class SliceSegmenterSpec:
    """How to build the default slice segmenter: SAM automatic segmentation.

    Attributes:
        model: zoo name or checkpoint path; None = :func:`~napari_sam.engine.models.zoo.default_model_name`.
        device, precision: resolved on the process that builds it into
            :class:`~napari_sam.engine.models.device.InferenceOptions`.
        settings: the checked :class:`~napari_sam.engine.automatic.settings.AutoSettings`
            (grid, thresholds, and ``tile_shape``/``halo`` for large slices).
        intensity_limits: (low, high) used to normalise every slice of a non-uint8
            stack the same way (computed once over the stack); None for uint8.
    """

    model: str | None = None
    device: str | None = None
    precision: str | None = None
    settings: AutoSettings = DEFAULTS
    intensity_limits: tuple[float, float] | None = None

    def describe(self) -> dict:
        """JSON-able description (recorded in the job metadata of a batch output)."""
        d = {"kind": f"sam-{self.settings.method or 'auto'}", "model": self.model, "device": self.device,
             "precision": self.precision, **self.settings.describe(),
             "intensity_limits": None if self.intensity_limits is None else list(self.intensity_limits)}
        return d

    def resolved(self) -> SliceSegmenterSpec:
        """This spec with its settings resolved for its model (method chosen, the model's thresholds
        filled in; :func:`~napari_sam.engine.models.model_profile.profile`: nothing is downloaded)."""
        if self.settings.is_resolved:
            return self
        from dataclasses import replace

        from ..models.model_profile import profile

        return replace(self, settings=profile(self.model).resolve(self.settings))

    def build(self) -> SegmentSliceFn:
        """Load the model and return the slice segmenter (not cached; see :func:`build_cached`)."""
        from ..models.model_profile import model_profile
        from ..models.device import InferenceOptions
        from ..models.zoo import default_model_name, load_model
        from ..progress import run_blocking

        options = InferenceOptions.resolve(self.device, self.precision)
        name = self.model or default_model_name()
        model = load_model(name, device=options.device, progressbar=False)
        settings = model_profile(model, name).resolve(self.settings)
        run = SliceRun(model, settings, options)  # fails now for a bad pairing, not on the first slice
        limits = self.intensity_limits

        def segment(image: np.ndarray) -> np.ndarray:
            return np.asarray(run_blocking(run.steps(np.asarray(image), limits)), dtype=np.int32)

        return segment


class SliceRun:
    """One model and resolved settings, ready to label slices (see :func:`label_slice_steps`)."""

    def __init__(self, model, settings: AutoSettings, options=None) -> None:
        if not settings.is_resolved:
            raise ValueError("SliceRun needs resolved settings (AutoSettings.resolved).")
        self.model, self.settings, self.options = model, settings, options
        if settings.method == "amg":
            from .amg import SamAutomaticMaskGenerator  # imports torchvision-free NMS; never at module import

            self._amg = SamAutomaticMaskGenerator.from_settings(model, settings, options=options)
        else:
            from .instance_decoder import require_decoder

            require_decoder(model)
            self._maps = settings.instance_map_settings()

    @property
    def reads_whole_embedding(self) -> bool:
        """Whether a run reads one embedding of the whole slice (the decoder, untiled), so a
        precomputed one can be passed to :meth:`steps`."""
        return self.settings.method == "ais" and self.settings.tile_shape is None

    def steps(self, image: np.ndarray | None, intensity_limits: tuple[float, float] | None = None, embedding=None):
        """A progress generator returning the (H, W) int32 labels of one 2D slice.

        ``embedding``: the slice's precomputed embedding (same model, options and intensity
        limits), used instead of an encoder pass (``image`` may then be None); only when
        :attr:`reads_whole_embedding`.
        """
        if embedding is not None and not self.reads_whole_embedding:
            raise ValueError("A precomputed embedding is read by the untiled instance decoder only.")
        if embedding is None and image is None:
            raise ValueError("Give the slice's image (or, for the untiled decoder, its embedding).")
        if self.settings.method == "amg":
            return (yield from self._amg.label_slice_iter(image, intensity_limits))
        from .instance_decoder import segment_with_decoder_steps

        s = self.settings
        return (yield from segment_with_decoder_steps(
            self.model, image if embedding is None else None, embedding=embedding, settings=self._maps,
            intensity_limits=intensity_limits, tile_shape=s.tile_shape, halo=s.halo, options=self.options))


def label_slice_steps(model, image: np.ndarray, settings: AutoSettings, *, model_name: str | None = None,
                      options=None, intensity_limits: tuple[float, float] | None = None):
    """Automatic labels of one 2D slice as the settings say; a progress generator.

    ``settings`` are resolved for ``model`` first (its decoder as attached, the thresholds of zoo
    model ``model_name``), so ``method=None`` means the decoder when the model has one.
    Returns (H, W) int32 labels, 0 = background.
    """
    from ..models.model_profile import model_profile

    run = SliceRun(model, model_profile(model, model_name).resolve(settings), options)
    return (yield from run.steps(image, intensity_limits))


def label_segmenter_slice_steps(segmenter, slice_index, settings: AutoSettings, *, model_name: str | None = None):
    """Automatic labels of one slice of a :class:`~napari_sam.engine.prediction.segmenter.Segmenter`'s
    image (its model, options and intensity limits); a progress generator.

    Same labels as :func:`label_slice_steps` on the slice. When the run reads one embedding of
    the whole slice (the instance decoder, untiled) and the segmenter holds the slice in one
    tile, the segmenter's embedding is used: taken from its caches when the slice was clicked
    on or precomputed, else computed and kept there, so clicks after it need no encoder pass.
    Hold the segmenter's lock (or its owner's) around the run.
    """
    from ..models.model_profile import model_profile

    run = SliceRun(segmenter.model, model_profile(segmenter.model, model_name).resolve(settings), segmenter.options)
    if run.reads_whole_embedding and len(segmenter.tile_grid) == 1:  # the pixels are read only to embed them
        embedding = yield from segmenter.embed(slice_index)
        return (yield from run.steps(None, segmenter.intensity_limits(), embedding=embedding))
    return (yield from run.steps(segmenter.read_slice(slice_index), segmenter.intensity_limits()))


def build_cached(spec: SliceSegmenterSpec) -> SegmentSliceFn:
    """:meth:`SliceSegmenterSpec.build`, once per process and spec."""
    fn = _CACHE.get(spec)
    if fn is None:
        fn = _CACHE[spec] = spec.build()
    return fn


def resolve(segment_slice: SegmentSliceFn | SliceSegmenterSpec) -> SegmentSliceFn:
    """A callable from a callable or a spec (specs are built through the per-process cache)."""
    return build_cached(segment_slice) if isinstance(segment_slice, SliceSegmenterSpec) else segment_slice


def describe(segment_slice: SegmentSliceFn | SliceSegmenterSpec) -> dict:
    """JSON-able identity of a slice segmenter, for job metadata."""
    if isinstance(segment_slice, SliceSegmenterSpec):
        return segment_slice.describe()
    from ..store.fingerprint import callable_identity

    inner = segment_slice.func if isinstance(segment_slice, functools.partial) else segment_slice
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return {"kind": "callable", "name": f"{getattr(inner, '__module__', '?')}.{name}",
            "code": callable_identity(segment_slice)}


def otsu_labels(image: np.ndarray) -> np.ndarray:
    """A classical slice segmenter: Gaussian blur (sigma 1), Otsu threshold, connected components.

    (H, W) or (H, W, C) image -> (H, W) int32 labels. Useful as a quick baseline
    and as a model-free stand-in in tests and benchmarks of the batch machinery.
    """
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    img = gaussian(img, 1.0, preserve_range=True)
    if float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.int32)
    return label(img > threshold_otsu(img)).astype(np.int32)


def _merge_seams(labels: np.ndarray, tile: tuple[int, int], min_contact: float = 0.5) -> np.ndarray:
    """Merge objects cut by tile borders: two labels facing each other across a seam
    are merged when their contact covers >= ``min_contact`` of the shorter border run."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    def seam_pairs(a: np.ndarray, b: np.ndarray):
        ok = (a > 0) & (b > 0)
        if not ok.any():
            return
        pairs, counts = np.unique(np.stack([a[ok], b[ok]]), axis=1, return_counts=True)
        len_a = dict(zip(*np.unique(a[a > 0], return_counts=True)))
        len_b = dict(zip(*np.unique(b[b > 0], return_counts=True)))
        for (la, lb), n in zip(pairs.T, counts):
            if n >= min_contact * min(len_a[la], len_b[lb]):
                ra, rb = find(int(la)), find(int(lb))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)

    h, w = labels.shape
    for r in range(tile[0], h, tile[0]):
        seam_pairs(labels[r - 1], labels[r])
    for c in range(tile[1], w, tile[1]):
        seam_pairs(labels[:, c - 1], labels[:, c])
    if not parent:
        return labels
    ids = np.unique(labels)
    lut = np.array([find(int(i)) for i in ids], dtype=np.int64)
    return lut[np.searchsorted(ids, labels)].astype(np.int32)


def tiled(segment: SegmentSliceFn, tile: tuple[int, int]) -> SegmentSliceFn:
    """Run a user's ``segment`` callable on (rows, cols) tiles of a slice and stitch the labels.

    For callables only: SAM's slices are tiled by the automatic mask generator itself
    (``generate_labels(tile_shape=..., halo=...)``: each mask is taken from the tile that
    sees it with context), which a plain ``(image) -> labels`` callable cannot offer.

    Ids are made unique across tiles, then objects cut by a tile border are
    merged when they touch along most of the shorter side of the cut
    (:func:`_merge_seams`).
    """
    tr, tc = int(tile[0]), int(tile[1])
    if tr <= 0 or tc <= 0:
        raise ValueError(f"tile must be two positive sizes (rows, cols); got {tile}.")

    def run(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        h, w = image.shape[:2]
        out = np.zeros((h, w), np.int32)
        offset = 0
        for r in range(0, h, tr):
            for c in range(0, w, tc):
                lab = np.asarray(segment(image[r:r + tr, c:c + tc]), dtype=np.int32)
                out[r:r + tr, c:c + tc] = np.where(lab > 0, lab + offset, 0)
                offset = max(offset, int(out.max()))
        return _merge_seams(out, (tr, tc))

    return run
