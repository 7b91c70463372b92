"""Dock widget: fine-tune a model on an image layer and its labels layer.

Runs :func:`napari_sam.training.trainer.fine_tune` in a napari worker (progress
bar with the loss, cancel between steps: the last checkpoint is saved on
cancel and a later run with "resume" continues it). The model is loaded inside
the worker; torch.optim loads ``torch._dynamo`` there, safe because the widgets keep triton out
(:mod:`napari_sam.widgets.gl_safety`).

A 2D image with 2D labels gives one training pair; a (Z, Y, X) stack with
(Z, Y, X) labels gives one pair per slice that has objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from ..errors import NapariSamError
from .model_picker import ModelPicker
from .workers import Job, start_generator_job



def layer_pairs(image_data, labels_data) -> list:
    """Training pairs from layers' data: 2D + 2D, or (Z, Y, X) + (Z, Y, X) keeping slices with objects."""
    import numpy as np

    from ..errors import TrainingError
    from ..training.datasets import pairs_from_arrays

    img, lab = np.asarray(image_data), np.asarray(labels_data)
    if lab.ndim == 3 and img.shape[:3] == lab.shape:
        keep = [z for z in range(lab.shape[0]) if (lab[z] > 0).any()]
        if not keep:
            raise TrainingError("The labels layer contains no objects; paint or segment some first.")
        return pairs_from_arrays([img[z] for z in keep], [lab[z] for z in keep])
    return pairs_from_arrays(img, lab)


class TrainingWidget(Container):
    """Fine-tune SAM on the objects of a Labels layer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._job: Job | None = None
        self.last_result: Any = None
        self._image = ComboBox(label="image", choices=self._layer_choices("Image"), nullable=True)
        self._labels = ComboBox(label="labels", choices=self._layer_choices("Labels"), nullable=True)
        self._picker = ModelPicker("start from")
        self._model, self._model_file = self._picker.combo, self._picker.file
        self._picker.select_default()  # no download: a model already downloaded, else the bundled tiny
        self._decoder_only = CheckBox(text="decoder only (freeze encoder, faster)", value=True)
        self._epochs = SpinBox(label="epochs", min=1, max=10000, value=20)
        self._interactions = SpinBox(label="prompt rounds", min=1, max=16, value=4)
        self._output = FileEdit(label="save as (.pt)", mode="w", filter="*.pt")
        self._resume = CheckBox(text="resume a stopped run", value=False)
        self._overwrite = CheckBox(text="overwrite existing file", value=False)
        self._run = PushButton(text="Train")
        self._cancel = PushButton(text="Stop (keeps last checkpoint)", enabled=False)
        self._status = Label(label="status", value="pick an image and its labels")
        self.extend([self._image, self._labels, self._model, self._model_file, self._decoder_only, self._epochs,
                     self._interactions, self._output, self._resume, self._overwrite, self._run, self._cancel,
                     self._status])
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh)

    def _layer_choices(self, kind: str):
        def choices(_widget=None):
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, cls)]

        return choices

    def _refresh(self, _event=None) -> None:
        self._image.reset_choices()
        self._labels.reset_choices()

    @property
    def running(self) -> bool:
        return self._job is not None and self._job.running

    def run(self, _=None) -> Job | None:
        """Start training; returns the job (None when the inputs are not usable)."""
        from ..training.trainer import TrainConfig, check_output, fine_tune

        if self.running:
            return self._job
        image, labels = self._image.value, self._labels.value
        out = Path(str(self._output.value or ""))
        try:
            if image is None or labels is None:
                raise NapariSamError("Pick an image layer and a labels layer.")
            if str(out) in ("", "."):
                raise NapariSamError("Choose where to save the fine-tuned model (save as).")
            check_output(out, bool(self._resume.value), bool(self._overwrite.value))
            pairs = layer_pairs(image.data[0] if image.multiscale else image.data, labels.data)
            spec = self._picker.spec()
        except NapariSamError as e:
            self._status.value = str(e)
            return None
        cfg = TrainConfig(epochs=int(self._epochs.value), decoder_only=bool(self._decoder_only.value),
                          n_interactions=int(self._interactions.value))
        resume, overwrite = bool(self._resume.value), bool(self._overwrite.value)

        def make_gen():
            def gen():
                from ..engine.models.zoo import load_model

                model = load_model(spec)
                return (yield from fine_tune(model, pairs, out, cfg, resume=resume, overwrite=overwrite))

            return gen()

        self.last_result = None
        self._status.value = f"training on {len(pairs)} image(s) -> {out}"
        self._run.enabled, self._cancel.enabled = False, True
        self._job = start_generator_job(make_gen, description="napari-sam: training", on_return=self._done,
                                        on_error=self._error, on_finish=self._finished)
        return self._job

    def cancel(self, _=None) -> None:
        if self.running:
            self._job.cancel()
            self._status.value = "stopped: the last checkpoint is saved; tick 'resume' to continue"

    def _done(self, result) -> None:
        if result is None:
            return
        self.last_result = result
        self._status.value = f"saved {result.checkpoint} after {result.steps} steps; choose it as the model file"

    def _error(self, e: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._status.value = f"error: {e}"
        show_error(f"napari-sam training: {e}")

    def _finished(self) -> None:
        self._run.enabled, self._cancel.enabled = True, False
