"""Dock widget for batch runs: segment every slice of an image layer into 3D labels.

Runs :func:`napari_sam.engine.batch.run.segment_stack` in a napari worker (progress
bar in the activity dock, cancel between slices), writes slice by slice into a
zarr output (resumable: running the same job again on the same output picks
up where it stopped), and adds the result as a Labels layer backed by the
zarr array (not loaded into memory).

The model is loaded inside the worker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from ..errors import NapariSamError
from ..engine.automatic.settings import BATCH_DEFAULTS, DEFAULTS, AutoSettings
from .auto_method import MethodChoice, TinyNote
from .channel_picker import ChannelPicker
from .model_picker import ModelPicker
from .workers import Job, start_generator_job

PICK_IMAGE = "pick an image"
READY = "ready: press 'Segment stack'"


class BatchWidget(Container):
    """Segment a whole stack (or a 2D image, as one slice) automatically: with the model's instance
    decoder or a grid of point prompts ("method"; auto = the decoder when the model has one).

    ``segment_slice``: optional ``(image) -> labels`` callable used instead of SAM
    (scripts and tests); None means the chosen model.
    """

    def __init__(self, napari_viewer: Any, segment_slice: Any = None) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.segment_slice = segment_slice
        self._job: Job | None = None
        self.last_result: Any = None

        self._image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self._channels = ChannelPicker(napari_viewer)
        self._picker = ModelPicker("model")
        self._model, self._model_file = self._picker.combo, self._picker.file
        self._method = MethodChoice()
        self._points = SpinBox(label="points per side", min=1, max=128, value=DEFAULTS.points_per_side,
                               tooltip="grid prompts (amg) only")
        self._output = FileEdit(label="output", mode="w", filter="*.zarr *.tif *.tiff",
                                tooltip="a .zarr folder or a .tif file (empty: a temporary .zarr)")
        self._overwrite = CheckBox(text="overwrite existing output", value=False)
        self._run = PushButton(text="Segment stack")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(label="status", value=PICK_IMAGE)
        self.extend([self._image, self._channels.select, self._model, self._model_file, self._method, self._points,
                     self._output, self._overwrite, self._run, self._cancel, self._status])

        self._picker.select_default()
        self._note = TinyNote(self._model)
        self.insert(self.index(self._model_file) + 1, self._note)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._image.changed.connect(self._idle_status)
        self._image.changed.connect(self._channels.follow)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_images)
        self._refresh_images()

    # ---- choices ------------------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, _event=None) -> None:
        self._image.reset_choices()
        if self._image.value is None and self._image.choices:
            self._image.value = self._image.choices[-1]
        self._channels.refresh()
        self._idle_status()

    def _idle_status(self, _value=None) -> None:
        """While idle, the status prompt follows the selection (other messages stay until the next run)."""
        if self._status.value in (PICK_IMAGE, READY):
            self._status.value = PICK_IMAGE if self._image.value is None else READY

    def _output_path(self, layer) -> Path:
        value = self._output.value
        if value and str(value) not in ("", "."):
            return Path(value)
        out = Path(tempfile.mkdtemp(prefix="napari-sam-")) / f"{layer.name}_labels.zarr"
        self._output.value = out
        return out

    # ---- actions ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._job is not None and self._job.running

    def run(self, _=None) -> Job | None:
        """Start the batch job on the chosen image; returns the job (None when nothing could start)."""
        from ..engine.batch.run import segment_stack

        if self.running:
            return self._job
        layer = self._image.value
        if layer is None:
            self._status.value = "pick an image layer first"
            return None
        if layer.ndim not in (2, 3):
            self._status.value = f"image has {layer.ndim} dimensions; expected a 2D image or a (Z, Y, X) stack"
            return None
        try:
            # the layer's axes as the user sees them (slices, not a guess), or the chosen channels' composite
            data, axes, channel = self._channels.engine_input()
            output = self._output_path(layer)
            model = None if self.segment_slice is not None else self._picker.spec()
        except NapariSamError as e:
            self._status.value = str(e)
            return None
        self.last_result = None
        self._status.value = f"segmenting {layer.name} -> {output}"
        self._run.enabled, self._cancel.enabled = False, True

        settings = None if self.segment_slice is not None else AutoSettings(
            method=self._method.method(), points_per_side=int(self._points.value),
            min_mask_region_area=BATCH_DEFAULTS.min_mask_region_area)

        def make_gen():
            return segment_stack(data, output, model=model, overwrite=bool(self._overwrite.value),
                                 axes=axes, channel=channel,
                                 segment_slice=self.segment_slice, settings=settings)

        self._job = start_generator_job(
            make_gen, description=f"napari-sam: segmenting {layer.name}",
            on_return=lambda result: self._show(result, layer), on_error=self._error, on_finish=self._finished,
        )
        return self._job

    def cancel(self, _=None) -> None:
        """Stop after the current slice; finished slices stay in the output (run again to resume)."""
        if self.running:
            self._job.cancel()
            self._status.value = "cancelled: finished slices are kept; run again to resume"

    def _show(self, result, layer) -> None:
        if result is None:
            return
        from ..engine.batch.run import open_labels

        self.last_result = result
        labels = open_labels(result.path)
        if labels.shape[0] == 1 and layer.ndim == 2:
            labels = labels[0]  # a 2D image was run as a single slice
        self._viewer.add_labels(labels, name=f"{layer.name} labels", scale=layer.scale[: labels.ndim],
                                translate=layer.translate[: labels.ndim])
        resumed = f", {result.resumed_slices} slices resumed" if result.resumed_slices else ""
        self._status.value = f"{result.n_objects} objects in {result.n_slices} slices{resumed}"

    def _error(self, e: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._status.value = f"error: {e}"
        show_error(f"napari-sam batch: {e}")

    def _finished(self) -> None:
        self._run.enabled, self._cancel.enabled = True, False
