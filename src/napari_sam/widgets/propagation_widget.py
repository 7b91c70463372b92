"""Dock widget "Propagate in 3D": carry objects through z or time, and segment the displayed slice automatically.

With a SAM 1 model, objects go slice to slice with prompts from the previous slice; with a SAM 2.1
model (``sam2.1_hiera_*``) all of them are tracked at once with SAM 2 memory, through a z-stack or a
time-lapse (T, Y, X) alike, keeping their ids. "Add tracks layer" adds a napari Tracks layer of the
objects' centroids frame by frame (:mod:`napari_sam.adapters.tracks`).

Runs :func:`napari_sam.engine.volumes.propagation.propagate` (seeds: the Labels layer's objects on the
displayed slice) and automatic segmentation of the displayed slice (the model's instance decoder or
:class:`~napari_sam.engine.automatic.amg.SamAutomaticMaskGenerator`, as "auto: method" says)
in napari workers (:mod:`napari_sam.widgets.workers`), on a copy of the target's (Z, H, W) data.
When a run ends (or is cancelled: slices done so far are kept) the changed voxels are written on
the GUI thread with ``Labels.data_setitem`` inside ``Labels.block_history()``: one Ctrl+Z undoes
the run. Only the run's ids (and background) change; voxels edited by the user meanwhile are kept.

The runs, the choice of segmenter (the main widget's when it holds the picked model for the same
image: shared slice embeddings) and the writes live in
:class:`~napari_sam.adapters.propagation_session.PropagationSession` (``self.session``); this widget
reads its controls, starts the runs in workers and shows the outcome. torchvision is imported only in
the worker of "Segment this slice automatically", never at module import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox

from ..errors import InvalidImageError, NapariSamError
from ..engine.automatic.settings import DEFAULTS, AutoSettings
from .auto_method import MethodChoice, TinyNote
from .model_picker import ModelPicker
from .workers import Job, start_generator_job

DIRECTIONS = {"both": (1, -1), "up (+z)": (1,), "down (-z)": (-1,)}


class PropagationWidget(Container):
    """Propagate Labels objects through a (Z, H, W) stack and segment single slices automatically.

    Args:
        napari_viewer: the viewer.
        predict_fn: optional ``(z, SlicePrompt) -> SlicePrediction`` used instead of SAM (scripts, tests).
        segment_slice: optional ``(image (H, W[, C])) -> (H, W) int labels`` used instead of SAM's
            automatic mask generator.
        model: optional built ``Sam`` used instead of the model picker.
    """

    def __init__(self, napari_viewer: Any, predict_fn: Any = None, segment_slice: Any = None, model: Any = None):
        super().__init__(labels=True)
        from ..adapters.propagation_session import PropagationSession

        self._viewer = napari_viewer
        self.session = PropagationSession(napari_viewer, predict_fn=predict_fn, segment_slice=segment_slice,
                                          model=model)
        self._job: Job | None = None
        self._busy = False
        self._watched = None

        self._image = ComboBox(label="image (3D / time)", choices=self._image_choices, nullable=True)
        self._labels = ComboBox(label="labels", choices=self._labels_choices, nullable=True)
        self._object = SpinBox(label="object id", min=1, max=2**31 - 1, value=1)
        self._picker = ModelPicker("model", extra=self._main_model, from_file=False, families=("sam", "sam2"))
        self._model = self._picker.combo
        self._method = MethodChoice("auto: method")
        self._points = SpinBox(label="auto: points per side", min=1, max=128, value=DEFAULTS.points_per_side,
                               tooltip="grid prompts (amg) only")
        self._direction = ComboBox(label="from here", choices=list(DIRECTIONS), value="both")
        self._through = PushButton(text="Propagate object through z")
        self._from_here = PushButton(text="Propagate from here")
        self._all = PushButton(text="Propagate all objects on this slice")
        self._auto = PushButton(text="Segment this slice automatically")
        self._tracks = PushButton(text="Add tracks layer (object centroids)")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(label="status", value="pick a 3D image and a Labels layer")
        self._note = TinyNote(self._model)
        self.extend([self._image, self._labels, self._object, self._model, self._note, self._method, self._points,
                     self._direction, self._through, self._from_here, self._all, self._tracks, self._auto,
                     self._cancel, self._status])

        self._status.native.setWordWrap(True)  # long messages wrap instead of widening the dock
        self._select_default_model()
        self._through.changed.connect(lambda _=None: self.propagate_object())
        self._from_here.changed.connect(lambda _=None: self.propagate_object(DIRECTIONS[self._direction.value]))
        self._all.changed.connect(lambda _=None: self.propagate_all())
        self._auto.changed.connect(lambda _=None: self.segment_slice_automatically())
        self._tracks.changed.connect(lambda _=None: self.add_tracks())
        self._cancel.changed.connect(self.cancel)
        self._labels.changed.connect(self._watch_labels)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh)
        self._refresh()

    # ---- choices ------------------------------------------------------------------------------
    def _image_choices(self, _w=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        from ..adapters.layer_data import labels_shape

        return [(la.name, la) for la in self._viewer.layers if isinstance(la, Image) and len(labels_shape(la)) == 3]

    def _labels_choices(self, _w=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        from ..adapters.layer_data import ROLE_KEY

        # napari-sam's own preview is never a target (its contents are replaced at every click)
        return [(la.name, la) for la in self._viewer.layers
                if isinstance(la, Labels) and la.metadata.get(ROLE_KEY) != "preview"]

    def _main_model(self) -> list[str]:
        """The main widget's model name (e.g. a checkpoint file), offered first: embeddings are then shared."""
        from ..adapters.registry import get_controller

        ctl = get_controller(self._viewer, create=False)
        return [ctl.model_name] if ctl is not None and ctl.segmenter is not None and ctl.model_name else []

    def _select_default_model(self) -> None:
        """The model loaded in napari-sam's main widget (embeddings are then shared), else the default."""
        main = self._main_model()
        self._picker.select_default(preferred=main[0] if main else None)

    def _refresh(self, _event=None) -> None:
        self._model.reset_choices()
        for box in (self._image, self._labels):
            box.reset_choices()
            if box.value is None and box.choices:
                box.value = box.choices[-1]

    def _watch_labels(self, layer=None) -> None:
        """Follow the Labels layer's selected label (the last painted/picked one) in 'object id'."""
        if self._watched is not None:
            self._watched.events.selected_label.disconnect(self._on_selected)
        self._watched = layer
        if layer is not None:
            layer.events.selected_label.connect(self._on_selected)
            self._on_selected()

    def _on_selected(self, _event=None) -> None:
        if self._watched is not None and int(self._watched.selected_label) > 0:
            self._object.value = int(self._watched.selected_label)

    # ---- checks and the model -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._busy

    def _layers_and_slice(self) -> tuple[Any, Any, int]:
        """(image layer, Labels layer, displayed z in their data frame); raises with a clear message."""
        from ..adapters.labels_io import check_target
        from ..adapters.layer_data import displayed_slice_key

        image, labels = self._image.value, self._labels.value
        if image is None:
            raise InvalidImageError("Pick a 3D (Z, Y, X) image layer first.")
        if labels is None:
            raise InvalidImageError("Pick the target Labels layer (or add one: Layers > New Labels layer).")
        check_target(labels, image)
        return image, labels, int(displayed_slice_key(self._viewer, image)[0])

    # ---- actions ------------------------------------------------------------------------------
    def propagate_object(self, directions: tuple[int, ...] = (1, -1)) -> Job | None:
        """Propagate the object 'object id' from the displayed slice (replacing it beyond that slice)."""
        return self._propagate([int(self._object.value)], directions)

    def propagate_all(self) -> Job | None:
        """Propagate every object drawn on the displayed slice, both directions, in one run."""
        try:
            _, labels, z = self._layers_and_slice()
        except NapariSamError as e:
            return self._refuse(e)
        ids = [int(i) for i in np.unique(np.asarray(labels.data[z])) if i > 0]
        if not ids:
            return self._refuse(NapariSamError(f"No objects are drawn on slice {z} of {labels.name!r}."))
        return self._propagate(ids, (1, -1))

    def _propagate(self, ids: list[int], directions: tuple[int, ...]) -> Job | None:
        if self.running:
            return self._job
        try:
            image, labels, z = self._layers_and_slice()
            make_gen = self.session.propagate(image, np.asarray(labels.data), z, ids, directions, self._model.value)
        except NapariSamError as e:
            return self._refuse(e)

        how = " with SAM 2 memory" if self.session.uses_memory(self._model.value) else ""

        def done(diff):
            n = self.session.write_diff(labels, diff, set(ids))
            what = f"object {ids[0]}" if len(ids) == 1 else f"{len(ids)} objects"
            stopped = self.session.stop_requested
            self._status.value = f"{'cancelled; kept partial result of' if stopped else 'propagated'} {what}{how} " \
                                 f"from slice {z}: {n} voxels changed"

        return self._start(make_gen, done, f"propagating {len(ids)} object(s){how} from slice {z}")

    def add_tracks(self) -> Any:
        """Add (or update) a Tracks layer of the Labels layer's object centroids on every frame."""
        from ..adapters.tracks import add_tracks_layer

        labels = self._labels.value
        if labels is None:
            return self._refuse(InvalidImageError("Pick the Labels layer of the tracked objects first."))
        try:
            layer = add_tracks_layer(self._viewer, labels)
        except NapariSamError as e:
            return self._refuse(e)
        self._status.value = f"tracks of {len(set(layer.data[:, 0].astype(int)))} objects in {layer.name!r}"
        return layer

    def segment_slice_automatically(self) -> Job | None:
        """Automatic masks of the displayed slice, written with new ids on background pixels only."""
        if self.running:
            return self._job
        try:
            image, labels, z = self._layers_and_slice()
            settings = AutoSettings(method=self._method.method(), points_per_side=int(self._points.value))
            make_gen = self.session.segment_slice_automatically(image, z, settings, self._model.value)
        except NapariSamError as e:
            return self._refuse(e)

        def done(result):
            if result is None:
                self._status.value = "cancelled: nothing written"
                return
            self._status.value = f"slice {z}: {self.session.write_new_ids(labels, z, np.asarray(result))} new objects"

        return self._start(make_gen, done, f"segmenting slice {z}")

    def cancel(self, _=None) -> None:
        """Stop at the next slice; what was propagated so far is written (undo with Ctrl+Z)."""
        if self._busy:
            self.session.cancel()
            self._status.value = "cancelling..."

    # ---- plumbing -----------------------------------------------------------------------------
    def _start(self, make_gen, on_done, description: str) -> Job:
        self._status.value = description + "..."
        self._set_busy(True)
        self._job = start_generator_job(make_gen, description=f"napari-sam: {description}",
                                        on_return=lambda r: self._guard(on_done, r), on_error=self._error,
                                        on_finish=lambda: self._set_busy(False))
        return self._job

    def _guard(self, on_done, result) -> None:
        try:
            on_done(result)
        except NapariSamError as e:
            self._error(e)

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for b in (self._through, self._from_here, self._all, self._auto, self._tracks):
            b.enabled = not busy
        self._cancel.enabled = busy

    def _refuse(self, e: BaseException) -> None:
        self._status.value = str(e)
        return None

    def _error(self, e: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._status.value = f"error: {e}"
        show_error(f"napari-sam propagation: {e}")
