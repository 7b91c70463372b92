"""The napari-sam dock widget: pick an image and a model, click to segment, accept, undo.

Thin by design: it builds controls, starts workers (model loading, embedding)
and routes everything else to the viewer's
:class:`~napari_sam.adapters.controller.SamController`. Embedding and model
loading never run on the GUI thread (unless ``NAPARI_SAM_SYNC=1``); decoder
predictions for clicks do (milliseconds; see ``benchmarks/bench_click.py``).

Nothing here loads triton (see :mod:`napari_sam.widgets.gl_safety`: loading it after the
OpenGL canvas exists crashes under Mesa), and opening the widget does not import torch
at all: the model loads in a worker (``load_model``), which imports torch there.
"""

from __future__ import annotations

import contextlib
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox

from ..adapters import get_controller
from ..adapters.keys import KEYS
from ..adapters.layer_data import ROLE_KEY, unwrap
from ..errors import NapariSamError
from .channel_picker import ChannelPicker
from .model_picker import ModelPicker
from .workers import Job, start_function_job, start_generator_job, sync_mode

AUTO = "auto"
NEW_LAYER = "new layer"


def _default_model() -> str | None:
    """The zoo's default model name, or None when there is none to load without asking (no bundled model)."""
    from ..engine.models.zoo import default_model_name
    from ..errors import UnknownModelError

    try:
        return default_model_name()
    except UnknownModelError:
        return None


def _row(*widgets) -> Container:
    return Container(widgets=list(widgets), layout="horizontal", labels=False)


class SamWidget(Container):
    """Main dock widget of napari-sam (one per viewer; several share the viewer's controller)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self._viewer = unwrap(napari_viewer)  # the real viewer: layer identity matters to the controller
        self.controller = get_controller(self._viewer)
        self._embed_job: Job | None = None
        self._model_job: Job | None = None

        self._image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self._channels = ChannelPicker(self._viewer)
        self._picker = ModelPicker("model", families=("sam", "sam2"))  # SAM 2.1 clicks: engine/sam2/click_predictor.py
        self._model, self._model_file = self._picker.combo, self._picker.file
        if _default_model() in self._model.choices:
            self._model.value = _default_model()
        self._device = ComboBox(label="device", choices=self._device_choices)
        self._precision = ComboBox(label="precision", choices=[AUTO, "fp32", "bf16", "fp16", "int8"], value=AUTO)
        self._load = PushButton(text="Load model")
        self._target = ComboBox(label="labels", choices=self._target_choices)
        self._overwrite = CheckBox(text="overwrite existing labels", value=False)
        self._negative = CheckBox(text="negative clicks (or hold Alt)", value=False)
        self._box = PushButton(text="Draw box")
        self._accept = PushButton(text="Accept (Enter)")
        self._clear = PushButton(text="Clear (Esc)")
        self._next = PushButton(text="Next candidate (C)")
        self._undo = PushButton(text="Undo")
        self._redo = PushButton(text="Redo")
        self._edit_id = SpinBox(label="label id", min=1, max=2**31 - 1, value=1)
        self._edit = PushButton(text="Edit label")
        self._cancel = PushButton(text="Cancel embedding", enabled=False)
        self._status = Label(label="status", value="pick an image")
        self._device.label, self._precision.label = "device", "precision"
        self._timing = Label(label="info", value="no model loaded")

        self.extend(
            [
                self._image,
                self._channels.select,
                self._model,
                self._model_file,
                self._device,
                self._precision,
                self._load,
                self._timing,
                self._target,
                self._overwrite,
                self._negative,
                _row(self._accept, self._clear),
                _row(self._next, self._box),
                _row(self._undo, self._redo),
                _row(self._edit_id, self._edit),
                self._cancel,
                self._status,
            ]
        )
        self.tooltip = "Keys on napari-sam's layers: " + ", ".join(f"{k}: {v}" for k, v in KEYS.items())

        self._image.changed.connect(self._on_image)
        self._channels.select.changed.connect(self._on_channels)
        self._load.clicked.connect(self.load_model)
        self._target.changed.connect(self._on_target)
        self._overwrite.changed.connect(lambda v: setattr(self.controller, "overwrite", bool(v)))
        self._negative.changed.connect(lambda v: setattr(self.controller, "negative_mode", bool(v)))
        self._box.clicked.connect(self._draw_box)
        self._accept.clicked.connect(lambda: self._do("accept"))
        self._clear.clicked.connect(lambda: self._do("clear"))
        self._next.clicked.connect(lambda: self._do("next_candidate"))
        self._undo.clicked.connect(lambda: self._do("undo"))
        self._redo.clicked.connect(lambda: self._do("redo"))
        self._edit.clicked.connect(lambda: self._do("edit_label", int(self._edit_id.value)))
        self._cancel.clicked.connect(self.cancel_embedding)

        ev = self.controller.events
        ev.status.connect(self._on_status)
        ev.embedding_needed.connect(self._on_embedding_needed)
        ev.model_changed.connect(self._update_model_label)
        ev.image_changed.connect(self._on_controller_image)
        ev.preview.connect(self._update_model_label)
        layers = self._viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(layers, name).connect(self._reset_choices)

        self.native.destroyed.connect(self._disconnect)
        self.native.setMinimumWidth(360)  # room for the dock title "Segment Anything (napari-sam-lab)"
        self.native.setMaximumWidth(440)
        self._status.native.setWordWrap(True)
        self._timing.native.setWordWrap(True)
        if self.controller.segmenter is not None:
            self._update_model_label()
        if sync_mode():
            self._pick_first_image()
        else:  # after the widget is shown: napari's first Shapes layer (the box prompts) takes ~1 s
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._pick_first_image_if_open)

    def _disconnect(self, *_args) -> None:
        """The dock widget is gone: stop listening to the (longer-lived) controller and viewer."""
        self.cancel_embedding()
        ev = self.controller.events
        for emitter, cb in (
            (ev.status, self._on_status),
            (ev.embedding_needed, self._on_embedding_needed),
            (ev.model_changed, self._update_model_label),
            (ev.image_changed, self._on_controller_image),
            (ev.preview, self._update_model_label),
        ):
            emitter.disconnect(cb)
        for name in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, name).disconnect(self._reset_choices)

    # ---- choices ---------------------------------------------------------------------------------
    def _image_choices(self, _w=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _target_choices(self, _w=None):
        from napari.layers import Labels

        out = [(NEW_LAYER, None)]
        for layer in self._viewer.layers:
            if isinstance(layer, Labels) and layer.metadata.get(ROLE_KEY) != "preview":
                out.append((layer.name, layer))
        return out

    @staticmethod
    def _device_choices(_w=None):
        """'auto' (the best device), then the devices found once torch is loaded (in the model
        worker: importing torch here would hold the dock widget up for seconds)."""
        import sys

        if "torch" not in sys.modules:
            return [AUTO]
        from ..engine.models.device import available_devices

        return [AUTO, *available_devices()]

    def _reset_choices(self, event=None) -> None:
        current = self._image.value
        self._image.reset_choices()
        self._target.reset_choices()
        self._channels.refresh()
        if current is None and self.controller.image_layer is None:
            self._pick_first_image()

    def _pick_first_image_if_open(self) -> None:
        try:
            self._pick_first_image()
        except RuntimeError:  # the widget was closed before the event loop ran
            pass

    def _pick_first_image(self) -> None:
        choices = self._image_choices()
        if self.controller.image_layer is not None and any(c[1] is self.controller.image_layer for c in choices):
            self._image.value = self.controller.image_layer
        elif choices and self._image.value is None:
            self._image.value = choices[0][1]

    # ---- status ----------------------------------------------------------------------------------
    def _on_status(self, event) -> None:
        self._report(event.message, getattr(event, "level", "info"))

    def _report(self, message: str, level: str = "info") -> None:
        self._status.value = message
        self._status.tooltip = message
        if level in ("warning", "error"):
            from napari.utils.notifications import show_error, show_warning

            (show_error if level == "error" else show_warning)(f"napari-sam: {message}")

    def _update_model_label(self, event=None) -> None:
        ctl = self.controller
        if ctl.segmenter is None:
            self._timing.value = "no model loaded"
            return
        pred = ctl.segmenter.predictor
        parts = [f"{ctl.model_name} · {pred.device.type} · {pred.precision}"]
        if ctl.last_embed_seconds is not None:
            parts.append(f"embed {ctl.last_embed_seconds:.2f} s")
        if ctl.last_predict_seconds is not None:
            parts.append(f"decode {1000 * ctl.last_predict_seconds:.0f} ms")
        self._timing.value = " | ".join(parts)

    def _do(self, action: str, *args) -> Any:
        try:
            return getattr(self.controller, action)(*args)
        except NapariSamError as e:
            self._report(str(e), "warning")
        return None

    # ---- image / target --------------------------------------------------------------------------
    def _on_image(self, layer) -> None:
        if layer is self.controller.image_layer:
            return
        self.cancel_embedding()
        try:
            self.controller.set_image_layer(layer)
        except NapariSamError as e:
            self._report(str(e), "warning")
            return
        self._channels.follow(layer)
        if layer is not None and self.controller.segmenter is None and self._model_job is None:
            if _default_model() is not None:
                self._load_soon()
            else:
                self._report("Pick a model and press 'Load model' (zoo models are downloaded on first use).")

    def _on_controller_image(self, event=None) -> None:
        if self.controller.image_layer is None:
            self.cancel_embedding()
        if self._image.value is not self.controller.image_layer:
            self._image.reset_choices()
        self._channels.follow(self.controller.image_layer)

    def _on_channels(self, _value=None) -> None:
        """The encoder sees the mean of the chosen channel layers (the engine's channel choice)."""
        if self.controller.image_layer is None:
            return
        try:
            self.controller.set_channel_layers(self._channels.layers())
        except NapariSamError as e:
            self._report(str(e), "warning")

    def _on_target(self, layer) -> None:
        self.controller.target_layer = layer

    def _draw_box(self) -> None:
        try:
            self.controller.ensure_prompt_layers()
        except NapariSamError as e:
            self._report(str(e), "warning")
            return
        layer = self.controller.boxes_layer
        self._viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    # ---- model -----------------------------------------------------------------------------------
    def _load_soon(self) -> None:
        """Load the chosen model once the event loop runs again (inline with ``NAPARI_SAM_SYNC=1``).

        The worker imports torch, whose shared libraries load while holding the interpreter
        lock; starting it from the event loop lets the dock widget appear first.
        """
        if sync_mode():
            self.load_model()
            return
        from qtpy.QtCore import QTimer

        def start():
            if self.controller.segmenter is None and self._model_job is None and self.controller.image_layer is not None:
                self.load_model()

        QTimer.singleShot(0, start)

    def set_model(self, model: Any, name: str = "custom", precision: str | None = None) -> None:
        """Use an already built model (tests, scripts); triggers embedding of the displayed slice."""
        self.controller.set_model(model, name=name, precision=precision)

    def load_model(self) -> Job | None:
        """Load the chosen model with the chosen device/precision in a worker."""
        try:
            source = label = self._picker.spec()
        except NapariSamError as e:
            self._report(str(e), "warning")
            return None
        device = None if self._device.value == AUTO else self._device.value
        precision = None if self._precision.value == AUTO else self._precision.value
        if self._model_job is not None and self._model_job.running:
            self._model_job.cancel()
        self._status.value = f"loading model {label}..."

        def load():
            from ..engine.models.zoo import load_model

            return load_model(source, device=device)  # the precision belongs to the predictor (set_model)

        def done(model):
            self._model_job = None
            self._device.reset_choices()  # torch is loaded now: list the devices
            self.controller.set_model(model, name=label, precision=precision)
            self._report(f"model {label} loaded")

        def failed(exc):
            self._model_job = None
            self._report(f"Could not load model {label}: {exc}", "error")

        self._model_job = start_function_job(load, description=f"loading {label}", on_return=done, on_error=failed)
        if self._model_job.done:
            self._model_job = None
        return self._model_job

    # ---- embedding -------------------------------------------------------------------------------
    def _on_embedding_needed(self, event) -> None:
        if self._embed_job is not None and self._embed_job.running:
            return  # when it finishes, the controller asks for what is still missing
        self.start_embedding(event.key)

    def start_embedding(self, key=None) -> Job | None:
        """Embed slice ``key`` (default: displayed) in a worker; the preview follows when done."""
        ctl = self.controller
        try:
            make = ctl.embedding_job(key)
        except NapariSamError as e:
            self._report(str(e), "warning")
            return None
        self._cancel.enabled = True
        self._status.value = "embedding..."

        def done(result):
            self._embed_job = None
            ctl.embedding_finished(result)  # the controller outlives the dock widget: answer queued clicks
            with contextlib.suppress(RuntimeError):  # the dock widget may be closed by now
                self._cancel.enabled = False
                self._update_model_label()

        def failed(exc):
            self._embed_job = None
            with contextlib.suppress(RuntimeError):
                self._cancel.enabled = False
                self._report(f"Embedding failed: {exc}", "error")

        def finish():
            with contextlib.suppress(RuntimeError):
                self._cancel.enabled = False

        job = start_generator_job(lambda: make, description="napari-sam: embedding", on_return=done,
                                  on_error=failed, on_finish=finish)
        self._embed_job = None if job.done else job
        return self._embed_job

    def cancel_embedding(self) -> None:
        """Stop the running embedding at its next step."""
        if self._embed_job is not None and self._embed_job.running:
            self._embed_job.cancel()
            self._embed_job = None
            try:
                self._status.value = "embedding cancelled"
            except RuntimeError:  # the Qt widget is already deleted
                return
        try:
            self._cancel.enabled = False
        except RuntimeError:
            pass

    @property
    def busy(self) -> bool:
        """True while a model load or an embedding runs in a worker."""
        return any(j is not None and j.running for j in (self._embed_job, self._model_job))
