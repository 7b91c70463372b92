"""``PropagationSession``: z-propagation and automatic slice runs for one viewer, without Qt.

What the controller is for clicks, this is for the "Propagate in 3D" dock widget: it picks
the :class:`~napari_sam.engine.prediction.segmenter.Segmenter` (the controller's own when it
holds the same model and image, so slice embeddings are shared and its lock is taken;
otherwise one kept here for the last model and image), builds the runs as progress
generators that honour :meth:`cancel` between slices, and writes their results into the
Labels layer as one undo step each. The widget only reads its controls, starts the
generators in workers and shows the outcome.

Threading: the run generators are meant for a worker thread; the ``write_*`` methods touch
the layer and run on the GUI thread (the widget calls them from ``on_return``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ..engine.automatic.settings import AutoSettings
from ..engine.progress import CANCELLED, Progress, relay
from ..errors import InvalidImageError
from . import layer_data
from .registry import get_controller

#: a propagation run's result: (fancy index, old values, new values) of the changed voxels.
Diff = tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]


class PropagationSession:
    """Runs for one viewer.

    Args:
        viewer: the napari viewer (its controller, if any, is looked up per run).
        predict_fn: optional ``(z, SlicePrompt) -> SlicePrediction`` used instead of SAM.
        segment_slice: optional ``(image (H, W[, C])) -> (H, W) int labels`` instead of the model's
            automatic segmentation.
        model: optional built ``Sam`` used instead of the picked model name.
    """

    def __init__(self, viewer: Any, predict_fn: Any = None, segment_slice: Any = None, model: Any = None):
        self.viewer = viewer
        self.predict_fn, self.segment_slice, self.model = predict_fn, segment_slice, model
        self.stop_requested = False
        self._own: tuple[Any, Any, Any, Any] | None = None  # (model or name, image layer, its array, Segmenter)
        self._sam2: tuple[str, Any] | None = None  # (zoo name, loaded SAM 2.1 model)
        self._video: tuple[Any, Any] | None = None  # (SAM 2.1 model, its video predictor: frame features kept)

    # ---- SAM 2 -----------------------------------------------------------------------------------
    def uses_memory(self, name: str | None) -> bool:
        """Whether runs with model ``name`` track with SAM 2 memory (a SAM 2.1 model) rather than
        SAM 1 slice-to-slice prompts; decided without loading anything."""
        if self.predict_fn is not None:
            return False
        if self.model is not None:
            from ..engine.volumes.propagation import is_sam2_model

            return is_sam2_model(self.model)
        from ..engine.models.zoo import find_entry

        entry = find_entry(name) if isinstance(name, str) else None
        return entry is not None and entry.family == "sam2"

    def sam2_model(self, name: str | None) -> Any:
        """The SAM 2.1 model of ``name`` (loaded once and kept; may download)."""
        if self.model is not None:
            return self.model
        if self._sam2 is None or self._sam2[0] != name:
            from ..engine.models.zoo import load_model

            self._sam2 = (name, load_model(name))
        return self._sam2[1]

    def video_predictor(self, name: str | None) -> Any:
        """A SAM 2.1 video predictor of ``name`` kept across runs, so a re-propagation (after a
        correction) reuses the frame features its feature store still holds."""
        model = self.sam2_model(name)
        from ..engine.sam2.video_predictor import SAM2VideoPredictor

        if isinstance(model, SAM2VideoPredictor):
            return model
        if self._video is None or self._video[0] is not model:
            self._video = (model, SAM2VideoPredictor(model, bounded_memory=True))
        return self._video[1]

    # ---- the segmenter ---------------------------------------------------------------------------
    def segmenter(self, image: Any, name: str | None) -> tuple[Any, Callable[[], Any] | None]:
        """(Segmenter of model ``name`` holding ``image``'s array, the controller's ``busy`` lock
        factory when the segmenter is the controller's, else None); may load the model."""
        ctl = get_controller(self.viewer, create=False)
        layer = layer_data.unwrap(image)
        if (self.model is None and ctl is not None and ctl.segmenter is not None
                and ctl.image_layer is layer and ctl.model_name == name):
            return ctl.segmenter, ctl.busy
        source = name if self.model is None else self.model
        array = layer_data.layer_array(image)
        own = self._own
        if own is None or not (own[0] is source or (isinstance(source, str) and own[0] == source)) \
                or own[1] is not layer or own[2] is not array:
            from ..engine.prediction.segmenter import Segmenter

            seg = Segmenter(model=source)
            seg.set_image(array, rgb=layer_data.is_rgb(image), axes=layer_data.layer_axes(image))
            self._own = own = (source, layer, array, seg)
        return own[3], None

    def predictor(self, image: Any, name: str | None) -> Any:
        """The ``(z, SlicePrompt) -> SlicePrediction`` a propagation run calls (taking the controller's lock)."""
        if self.predict_fn is not None:
            return self.predict_fn
        from ..engine.volumes.propagation import segmenter_predict_fn

        seg, busy = self.segmenter(image, name)
        fn = segmenter_predict_fn(seg)
        if busy is None:
            return fn

        def locked(z, prompt):
            with busy():
                return fn(z, prompt)

        return locked

    # ---- runs (worker thread) --------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running run at its next step (what was done so far is kept)."""
        self.stop_requested = True

    def _cancellable(self, gen: Generator[Progress, Any, Any], partial: Callable[[], Any]):
        result = yield from relay(gen, cancelled=lambda: self.stop_requested)
        return partial() if result is CANCELLED else result

    def propagate(self, image: Any, labels: np.ndarray, z: int, ids: list[int], directions: tuple[int, ...],
                  name: str | None) -> Callable[[], Generator[Progress, None, Diff]]:
        """A factory of the run that propagates ``ids`` from slice ``z`` of a copy of ``labels``
        (Z, H, W); its result is the :data:`Diff` (partial when cancelled)."""
        from ..engine.volumes.propagation import propagate, seeds_from_labels

        before = np.array(labels)
        seeds = seeds_from_labels(before, ids, z)
        work = before.copy()  # filled in place by propagate(): partial results survive a cancel
        self.stop_requested = False

        memory = self.uses_memory(name)

        def run():
            if memory:  # SAM 2.1: all objects at once through the memory bank
                gen = propagate(self.video_predictor(name), seeds, labels=work, directions=directions,
                                image=layer_data.layer_array(image))
            else:
                gen = propagate(self.predictor(image, name), seeds, labels=work, directions=directions)
            result = yield from self._cancellable(gen, lambda: work)
            index = np.nonzero(before != result)
            return index, before[index], result[index]

        return run

    def segment_slice_automatically(self, image: Any, z: int, settings: AutoSettings,
                                    name: str | None) -> Callable[[], Generator[Progress, None, Any]]:
        """A factory of the run returning (H, W) automatic labels of slice ``z`` (None when cancelled);
        ``settings.method`` None: the model's decoder when it has one, else grid prompts."""
        if self.segment_slice is None and self.uses_memory(name):
            from ..errors import InvalidParameterError

            raise InvalidParameterError(
                f"{name} is a SAM 2.1 model, for propagation and tracking; automatic segmentation of a slice "
                "needs a SAM 1 model: pick one (e.g. the bundled 'tiny') in 'model'."
            )
        self.stop_requested = False

        def run():
            if self.segment_slice is not None:
                return np.asarray(self.segment_slice(np.asarray(layer_data.layer_array(image)[z])))
                yield  # pragma: no cover  (a generator)
            from ..engine.automatic.slice_segmenter import label_segmenter_slice_steps  # heavy: never at import

            seg, busy = self.segmenter(image, name)
            with busy() if busy is not None else seg.lock:  # the main widget's model: never beside its clicks
                gen = label_segmenter_slice_steps(seg, z, settings, model_name=name)  # its embedding, when it has one
                return (yield from self._cancellable(gen, lambda: None))

        return run

    # ---- writing results (GUI thread) ------------------------------------------------------------
    @staticmethod
    def _commit(layer: Any, index: tuple, values: np.ndarray) -> int:
        """Write ``values`` at fancy ``index`` as one undo step; returns the number of voxels written."""
        if len(index[0]):
            with layer.block_history():
                layer.data_setitem(index, values.astype(layer.data.dtype))
            layer.refresh()
        return int(len(index[0]))

    def write_diff(self, layer: Any, diff: Diff, ids: set[int]) -> int:
        """Write a run's ``diff`` where old and new are background or in ``ids``, and the voxel still
        holds the old value (a voxel the user edited meanwhile keeps the user's value)."""
        index, old, new = diff
        allowed = np.array(sorted(ids | {0}))
        ok = np.isin(old, allowed) & np.isin(new, allowed)
        ok &= np.asarray(layer.data[index]) == old
        return self._commit(layer, tuple(i[ok] for i in index), new[ok])

    def write_new_ids(self, layer: Any, z: int, result: np.ndarray) -> int:
        """Write (H, W) slice labels ``result`` on background of slice ``z`` as new consecutive ids;
        returns the number of new objects."""
        plane = np.asarray(layer.data[z])
        if result.shape != plane.shape:
            raise InvalidImageError(f"Automatic labels of shape {result.shape} do not fit slice shape {plane.shape}.")
        free = (result > 0) & (plane == 0)
        found = np.unique(result[free])
        start = int(np.asarray(layer.data).max()) + 1
        if len(found) and start + len(found) - 1 > np.iinfo(plane.dtype).max:
            raise InvalidImageError(f"Labels layer {layer.name!r} ({plane.dtype}) has no room for "
                                    f"{len(found)} new ids; convert it to a wider integer type.")
        new_ids = np.searchsorted(found, result[free]) + start
        rows, cols = np.nonzero(free)
        return 0 if not self._commit(layer, (np.full_like(rows, z), rows, cols), new_ids) else len(found)


__all__ = ["Diff", "PropagationSession"]
