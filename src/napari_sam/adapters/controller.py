"""``SamController``: click-to-segment state of one napari viewer (Qt-free).

It holds the :class:`~napari_sam.engine.prediction.segmenter.Segmenter`, the current image
layer, the prompt layers (Points clicks, Shapes boxes), the preview and target
Labels layers, the chosen candidate and the undo/redo stacks. The dock widget
drives it; so can the console::

    from napari_sam.adapters import get_controller
    ctl = get_controller(viewer)
    ctl.set_image_layer(viewer.layers["cells"])
    ctl.add_point((120, 80))          # (row, col) on the displayed slice
    ctl.accept()                      # -> the new label id

Threading: embedding a slice is offered as a progress generator (:meth:`embedding_job`)
for the widget to run in a worker; a console call that needs an embedding computes it inline.
Decoder predictions are shown on the calling (GUI) thread: a few ms for the tiny model, tens of
ms for vit_b on a 2-thread CPU. The one thread the controller starts is click-ahead
(:mod:`.click_ahead`): a mouse press on the Points layer starts the decode of the click it will
become, so that it overlaps napari's own handling of the click; the data event then takes that
answer only if the prompts match exactly. A lock guards the Segmenter
(:meth:`SamController.busy`); a prediction that finds it busy (an embedding running) is
deferred until the embedding finishes instead of waiting.

The embedding bookkeeping lives in :mod:`.embedding_jobs`, the commit undo/redo stacks in
:mod:`.commit_history`, picking a committed label back up in :mod:`.label_edit`, the Labels
layers napari-sam adds in :mod:`.own_layers`; the controller coordinates them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from ..engine.progress import Progress, run_blocking
from ..errors import ImageNotSetError, InvalidPromptError, NapariSamError
from . import labels_io, layer_data, own_layers, prompt_layers
from .click_ahead import ClickAhead, prompts_after_click
from .commit_history import CommitHistory
from .embedding_jobs import EmbeddingJobs, EmbeddingResult
from .label_edit import LabelEdit, pick_up, predict_prompts

__all__ = ["SamController", "EmbeddingResult"]


class SamController:
    """Click-to-segment session of one viewer. Get it with :func:`napari_sam.adapters.get_controller`.

    Events (``self.events``, napari ``EmitterGroup``): ``status`` (message, level), ``preview``,
    ``embedding_needed`` (key), ``committed`` (label_id), ``model_changed``, ``image_changed``.
    """

    def __init__(self, viewer: Any) -> None:
        from napari.utils.events import EmitterGroup

        viewer = layer_data.unwrap(viewer)
        self._viewer_ref = weakref.ref(viewer)
        self.events = EmitterGroup(
            source=self,
            status=None,
            preview=None,
            embedding_needed=None,
            committed=None,
            model_changed=None,
            image_changed=None,
        )
        self.segmenter = None
        self.model_name: str | None = None
        self.image_layer = None
        self._channel_layers: tuple = ()  # layers whose mean the encoder sees; () = the image layer alone
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self._target_layer = None  # None: create one on first accept
        self.overwrite = False
        self.candidate = 0
        self.prediction = None
        self.last_embed_seconds: float | None = None
        self.last_predict_seconds: float | None = None
        self._pred_key: tuple[int, ...] | None = None
        self._preview_key: tuple[int, ...] | None = None
        self._preview_box: tuple[slice, slice] | None = None  # bounding box of the shown preview
        self._history = CommitHistory()
        self._edit: LabelEdit | None = None  # the committed object being corrected
        self._lock = threading.Lock()  # guards the Segmenter; public as busy()
        self._jobs = EmbeddingJobs(self._lock)
        self._ahead = ClickAhead(self._lock)
        self._muted = False
        self._last_key: tuple[int, ...] | None = None
        self._polarity: prompt_layers.PolarityClicks | None = None
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.events.removed.connect(self._on_layer_removed)

    # ---- basics ----------------------------------------------------------------------------------
    @property
    def viewer(self) -> Any:
        v = self._viewer_ref()
        if v is None:
            raise NapariSamError("The viewer of this napari-sam controller has been closed.")
        return v

    def _status(self, message: str, level: str = "info") -> None:
        self.events.status(message=message, level=level)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Hold the Segmenter lock (blocking) for the ``with`` block: use it around any call into
        :attr:`segmenter` made from another thread or widget, so it never overlaps an embedding."""
        with self._lock:
            yield

    @property
    def click_ahead(self) -> ClickAhead:
        """The decode started at a mouse press (:mod:`.click_ahead`); its ``used`` / ``discarded`` counts."""
        return self._ahead

    @property
    def negative_mode(self) -> bool:
        """When True, plain clicks are negative and Alt/Control-clicks positive."""
        return bool(self._polarity and self._polarity.negative_mode)

    @negative_mode.setter
    def negative_mode(self, value: bool) -> None:
        if self._polarity is None:
            self._polarity = prompt_layers.PolarityClicks()
        self._polarity.negative_mode = bool(value)
        if self.points_layer is not None:
            self.points_layer.feature_defaults[prompt_layers.POSITIVE] = not value
            self.points_layer.feature_defaults = self.points_layer.feature_defaults

    @property
    def target_layer(self) -> Any:
        """The Labels layer accepted objects go to (None: napari-sam creates one on the first accept)."""
        return self._target_layer

    @target_layer.setter
    def target_layer(self, layer: Any) -> None:
        self._target_layer = layer_data.unwrap(layer)

    # ---- model -----------------------------------------------------------------------------------
    def set_model(self, model: Any, name: str | None = None, precision: str | None = None) -> None:
        """Use ``model`` (a built ``Sam``, a zoo name or a checkpoint path; names load inline, blocking)."""
        from ..engine.prediction.segmenter import Segmenter

        with self._lock, warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always", RuntimeWarning)
            self.segmenter = Segmenter(model=model, precision=precision)
        for w in fallbacks:  # e.g. a SAM 2.1 model asked to run in int8: it runs in fp32 and says so
            if issubclass(w.category, RuntimeWarning):
                self._status(str(w.message), "warning")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.model_name = name or (model if isinstance(model, str) else getattr(model, "name", None) or "custom")
        self.prediction = None
        self.events.model_changed()
        if self.image_layer is not None:
            self._bind_image()
            if self._jobs.pending and not self.needs_embedding():  # a click waited for the model
                self.update_preview()

    def _require_segmenter(self):
        if self.segmenter is None:
            raise ImageNotSetError("No model is loaded: pick one in napari-sam's 'model' list and press 'Load'.")
        return self.segmenter

    # ---- image -----------------------------------------------------------------------------------
    def set_image_layer(self, layer: Any) -> None:
        """Segment ``layer`` (an Image layer of the viewer; None to stop). Prompts start empty."""
        layer = layer_data.unwrap(layer)
        if layer is not None:
            layer_data.check_image_layer(layer)
        if layer is self.image_layer:
            return
        self._jobs.invalidate()
        self._jobs.pending = False
        self._edit = None
        self.prediction = None
        self._remove_own_layers()
        self._watch_channels(())
        if self.image_layer is not None:
            self.image_layer.events.data.disconnect(self._on_image_data)
        self.image_layer = layer
        self._last_key = None
        self.events.image_changed()
        if layer is None:
            return
        layer.events.data.connect(self._on_image_data)
        self.ensure_prompt_layers()
        if self.segmenter is not None:
            self._bind_image()

    def _on_image_data(self, event=None) -> None:
        """The image layer's data were replaced: forget embeddings and the preview, embed again."""
        if self.image_layer is None or self.segmenter is None:
            return
        self.prediction = None
        self._edit = None
        self._jobs.invalidate()
        try:
            with self._lock:
                self._set_segmenter_image(self.image_layer)
        except NapariSamError as e:
            self._status(str(e), "warning")
            return
        preview = self.preview_layer
        if preview is not None and np.shape(preview.data) != layer_data.labels_shape(self.image_layer):
            self.preview_layer = None
            own_layers.remove_layers(self.viewer, [preview])
        self._show(None, None)
        self._request_embedding_if_needed()

    @property
    def channel_layers(self) -> list:
        """The image layers whose mean the encoder sees (default: the image layer alone)."""
        return list(self._channel_layers) or ([self.image_layer] if self.image_layer is not None else [])

    def set_channel_layers(self, layers: Any) -> None:
        """Let the encoder see the mean of ``layers`` (grayscale image layers of the image layer's shape,
        e.g. the channels napari opened as separate layers); empty or the image layer alone: that layer.

        Prompts, the preview and the labels stay in the image layer's frame. Raises
        :class:`~napari_sam.errors.InvalidImageError` for layers that cannot be combined.
        """
        if self.image_layer is None:
            raise ImageNotSetError("Pick the image layer before its channels.")
        chosen = tuple(layer_data.unwrap(layer) for layer in layers or ())
        if chosen == (self.image_layer,):
            chosen = ()
        if chosen == self._channel_layers:
            return
        layer_data.channel_input([self.image_layer, *chosen])  # refuse layers that do not fit, before any change
        self._watch_channels(chosen)
        self._on_image_data()

    def _watch_channels(self, layers: tuple) -> None:
        for layer in self._channel_layers:
            if layer is not self.image_layer:
                layer.events.data.disconnect(self._on_image_data)
        self._channel_layers = layers
        for layer in layers:
            if layer is not self.image_layer:
                layer.events.data.connect(self._on_image_data)

    def _set_segmenter_image(self, layer: Any) -> None:
        """Give the segmenter ``layer``'s array (or the channel composite) with the axes the user sees
        (call under the lock); the composite goes through the engine's own channel choice."""
        array, axes, channel = layer_data.channel_input(self._channel_layers or [layer])
        self.segmenter.set_image(array, rgb=layer_data.is_rgb(layer) if channel is None else False,
                                 axes=axes, channel=channel)

    def _bind_image(self) -> None:
        layer = self.image_layer
        with self._lock:
            self._set_segmenter_image(layer)
        self._jobs.invalidate()
        self._request_embedding_if_needed()

    def current_key(self) -> tuple[int, ...]:
        """Slice index of the displayed 2D slice of the image layer, () for a 2D image."""
        if self.image_layer is None:
            raise ImageNotSetError("No image layer is selected for napari-sam.")
        return layer_data.displayed_slice_key(self.viewer, self.image_layer)

    def needs_embedding(self, key: tuple[int, ...] | None = None) -> bool:
        """True when a model and image are set and the slice ``key`` (default: displayed) is not embedded."""
        if self.segmenter is None or self.image_layer is None:
            return False
        key = self.current_key() if key is None else key
        return self._jobs.needs_embedding(self.segmenter, key)

    def _request_embedding_if_needed(self) -> None:
        try:
            if self.needs_embedding():
                self.events.embedding_needed(key=self.current_key())
        except NapariSamError as e:
            self._status(str(e), "warning")

    def embedding_job(self, key: tuple[int, ...] | None = None) -> Generator[Progress, None, EmbeddingResult]:
        """A progress generator embedding slice ``key`` (default: displayed); safe to run in a worker.

        The Segmenter lock is held only while the encoder runs, never across a yield,
        so cancelling at a yield leaves nothing locked.
        """
        seg = self._require_segmenter()
        key = self.current_key() if key is None else tuple(key)
        return self._jobs.job(seg, key)

    def embedding_finished(self, result: EmbeddingResult | None) -> None:
        """Call on the GUI thread when an :meth:`embedding_job` returned: refresh the preview, embed what is next."""
        if not self._jobs.is_current(result):
            return
        self.last_embed_seconds = result.seconds
        self._status(f"embedded slice {result.key} in {result.seconds:.2f} s" if result.key else
                     f"embedded image in {result.seconds:.2f} s")
        if self._jobs.pending:
            self.update_preview()
        self._request_embedding_if_needed()

    def embed_now(self) -> None:
        """Embed the displayed slice inline (blocking; console use)."""
        if self.needs_embedding():
            self.embedding_finished(run_blocking(self.embedding_job()))

    # ---- prompt layers ---------------------------------------------------------------------------
    def ensure_prompt_layers(self) -> None:
        """Create (or re-create after deletion) the Points and Shapes prompt layers for the image."""
        viewer = self.viewer
        if self.image_layer is None:
            raise ImageNotSetError("No image layer is selected for napari-sam.")
        if self.boxes_layer is None or self.boxes_layer not in viewer.layers:
            self.boxes_layer = viewer.add_layer(prompt_layers.make_boxes_layer(self.image_layer))
            self.boxes_layer.events.data.connect(self._on_prompts_changed)
            self._bind_keys(self.boxes_layer)
        if self.points_layer is None or self.points_layer not in viewer.layers:
            layer = prompt_layers.make_points_layer(self.image_layer)
            if self._polarity is None:
                self._polarity = prompt_layers.PolarityClicks()
            layer.mouse_drag_callbacks.insert(0, self._polarity)
            layer.mouse_drag_callbacks.insert(1, self._decode_ahead)
            self.points_layer = viewer.add_layer(layer)
            self.points_layer.events.data.connect(self._on_prompts_changed)
            self._bind_keys(self.points_layer)
            self.points_layer.mode = "add"
        viewer.layers.selection.active = self.points_layer

    def _decode_ahead(self, layer: Any, event: Any) -> None:
        """Mouse press on the Points layer in add mode: start decoding the click it will become."""
        if getattr(event, "type", None) != "mouse_press" or str(getattr(layer, "mode", "")) != "add":
            return
        if getattr(event, "button", 1) != 1 or self._muted or self.segmenter is None or self.image_layer is None:
            return
        try:
            key = self.current_key()
            seg = self.segmenter
            if layer is not self.points_layer or not seg.has_embedding(key or None):
                return
            positive = bool(np.asarray(layer.feature_defaults[prompt_layers.POSITIVE])[0])
            p = prompts_after_click(layer, self.boxes_layer, self.image_layer, key,
                                    layer.world_to_data(event.position), positive)
            if p is None:
                return
            edit = self._edit if self._edit is not None and self._edit.key == key else None
        except Exception:  # noqa: BLE001 - the look-ahead must never cost the click, which reports errors itself
            return

        def decode():
            pred = predict_prompts(seg, p, key, edit)
            pred.masks[pred.best]  # upscale the candidate that will be shown, off the GUI thread too
            return pred

        self._ahead.start(decode, seg, p, key, edit)

    def _bind_keys(self, layer: Any) -> None:
        from .keys import bind_controller_keys

        bind_controller_keys(layer, self)

    def _remove_own_layers(self) -> None:
        # one at a time: removing a layer runs viewer callbacks that may read the others
        for attr in ("points_layer", "boxes_layer", "preview_layer"):
            layer = getattr(self, attr)
            setattr(self, attr, None)
            own_layers.remove_layers(self._viewer_ref(), [layer])
        self._preview_key = self._preview_box = None

    def add_point(self, rowcol, positive: bool = True) -> None:
        """Add a click at (row, col) of the displayed slice (image data frame); the preview updates."""
        self.ensure_prompt_layers()
        prompt_layers.add_point_on_slice(self.points_layer, self.image_layer, self.current_key(), rowcol, positive)
        self.points_layer.feature_defaults[prompt_layers.POSITIVE] = not self.negative_mode

    def add_box(self, box) -> None:
        """Add a box prompt (row0, col0, row1, col1) on the displayed slice (image data frame)."""
        self.ensure_prompt_layers()
        prompt_layers.add_box_on_slice(self.boxes_layer, self.image_layer, self.current_key(), box)

    def prompts(self) -> prompt_layers.SlicePrompts:
        """The prompts of the displayed slice, in the image's data frame."""
        return prompt_layers.read_prompts(self.points_layer, self.boxes_layer, self.image_layer, self.current_key())

    # ---- events ----------------------------------------------------------------------------------
    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if self._muted or action.lower().endswith("ing"):  # adding/removing/changing: wait for the end
            return
        self.update_preview()

    def _on_step(self, event=None) -> None:
        if self.image_layer is None:
            return
        try:
            key = self.current_key()
        except NapariSamError:
            return
        if key == self._last_key:
            return
        self._last_key = key
        if self._edit is not None and self._edit.key != key:
            self._edit = None
            self._status("Left the slice of the label being edited; the edit was dropped.")
        self.update_preview()
        self._request_embedding_if_needed()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.image_layer:
            self.set_image_layer(None)
            self._status("The image layer was removed; pick another image.")
        elif any(layer is other for other in self._channel_layers):
            self.set_channel_layers([other for other in self._channel_layers if other is not layer])
        elif layer is self.points_layer:
            self.points_layer = None
        elif layer is self.boxes_layer:
            self.boxes_layer = None
        elif layer is self.preview_layer:
            self.preview_layer = None
            self._preview_key = self._preview_box = None

    # ---- preview ---------------------------------------------------------------------------------
    def _show(self, key: tuple[int, ...] | None, mask: np.ndarray | None) -> None:
        if mask is None and (self.preview_layer is None or self._preview_key is None):
            return  # nothing is shown: nothing to clear
        new_layer = self.preview_layer is None or self.preview_layer not in self.viewer.layers
        if new_layer:
            self.preview_layer = own_layers.add_preview_layer(
                self.viewer, self.image_layer, self.points_layer, self._bind_keys
            )
            self._preview_key = self._preview_box = None
        # _preview_key None: the preview was cleared by this controller (or is new): all zero
        self._preview_box = labels_io.show_preview(
            self.preview_layer, key or (), mask, clear_key=self._preview_key, clear_box=self._preview_box,
            blank=self._preview_key is None and not new_layer,
        )
        self._preview_key = key if mask is not None else None
        self.events.preview()

    def current_mask(self) -> np.ndarray | None:
        """The mask the preview shows: (H, W) bool, or None."""
        if self.prediction is not None:
            return self.prediction.masks[self.candidate % len(self.prediction.masks)]
        if self._edit is not None:
            return self._edit.mask
        return None

    def update_preview(self, raise_errors: bool = False) -> np.ndarray | None:
        """Re-run the decoder for the displayed slice's prompts and show the best candidate.

        Errors (a click outside the image, ...) become a status message and an empty
        preview, unless ``raise_errors``. Returns the shown mask or None.
        """
        self.prediction = None
        self.candidate = 0
        if self.image_layer is None or self.segmenter is None:
            self._show(None, None)
            if self.image_layer is not None and self._has_prompts():
                self._jobs.pending = True  # answered once the model is loaded and the image embedded
                self._status("Loading the model; the preview follows when the image is embedded.")
            return None
        try:
            if tuple(self.segmenter.spatial_shape) != tuple(layer_data.labels_shape(self.image_layer)[-2:]):
                return None  # the image data changed and are being re-bound
            key = self.current_key()
            p = self.prompts()
            edit = self._edit if self._edit is not None and self._edit.key == key else None
            if p.empty:
                self._jobs.pending = False
                self._show(key, edit.mask if edit else None)
                return self.current_mask()
            t0 = time.perf_counter()
            pred = self._ahead.take(self.segmenter, p, key, edit)
            if pred is None:
                if not self.segmenter.has_embedding(key or None) or not self._lock.acquire(blocking=False):
                    self._jobs.pending = True
                    self._status("Embedding the image; the preview follows when it is done.")
                    self._request_embedding_if_needed()
                    return None
                try:
                    pred = predict_prompts(self.segmenter, p, key, edit)
                finally:
                    self._lock.release()
            self._jobs.pending = False
            self.last_predict_seconds = time.perf_counter() - t0
        except NapariSamError as e:
            self._show(None, None)
            if raise_errors:
                raise
            self._status(str(e), "warning")
            return None
        self.prediction = pred
        self.candidate = pred.best
        self._pred_key = key
        self._show(key, self.current_mask())
        return self.current_mask()

    def _has_prompts(self) -> bool:
        try:
            return not self.prompts().empty
        except NapariSamError:
            return False

    def next_candidate(self) -> int:
        """Show the next of the candidate masks (ambiguous single prompts give three); returns its index."""
        if self.prediction is None:
            raise InvalidPromptError("No prediction to cycle through: click on an object first.")
        self.candidate = (self.candidate + 1) % len(self.prediction.masks)
        self._show(self._pred_key, self.current_mask())
        score = float(self.prediction.scores[self.candidate])
        self._status(f"candidate {self.candidate + 1}/{len(self.prediction.masks)} (score {score:.2f})")
        return self.candidate

    def segment(self) -> np.ndarray:
        """Console: embed the displayed slice if needed (blocking), predict, show; returns the (H, W) bool mask."""
        self._require_segmenter()
        self.embed_now()
        mask = self.update_preview(raise_errors=True)
        if mask is None:
            raise InvalidPromptError("No prompts on the displayed slice: add a point or a box first.")
        return mask

    # ---- commit / undo ---------------------------------------------------------------------------
    def _ensure_target(self) -> Any:
        self.target_layer = own_layers.find_or_add_target(
            self.viewer, self.target_layer, self.image_layer, self.points_layer, self._bind_keys
        )
        return self.target_layer

    def accept(self) -> int:
        """Write the previewed object into the target Labels layer; returns its id. Prompts are cleared.

        A new object gets an unused id (max + 1); an edited one keeps its id. Other labels are left
        untouched unless :attr:`overwrite` is True. Nothing changes if anything fails.
        """
        if self._jobs.pending:
            raise InvalidPromptError("Still embedding this slice; accept once the preview is shown.")
        mask = self.current_mask()
        if mask is None or not mask.any():
            raise InvalidPromptError("Nothing to accept: click on an object (or draw a box) first.")
        key = self.current_key()
        target = self._ensure_target()
        edit_id = self.editing
        label_id = self._history.commit(target, key, mask, edit_id=edit_id, overwrite=self.overwrite)
        self.clear()
        self.events.committed(label_id=label_id)
        self._status(f"accepted label {label_id}")
        return label_id

    def clear(self) -> None:
        """Discard the prompts, the preview and any edit in progress."""
        self._muted = True
        try:
            prompt_layers.clear_prompts(self.points_layer, self.boxes_layer)
        finally:
            self._muted = False
        self._edit = None
        self.prediction = None
        self._jobs.pending = False
        self._show(None, None)

    def undo(self) -> int | None:
        """Revert the last commit; returns its label id (None when there is nothing to undo)."""
        label_id = self._history.undo()
        self._status("Nothing to undo." if label_id is None else f"undid label {label_id}")
        return label_id

    def redo(self) -> int | None:
        """Re-apply the last undone commit; returns its label id (None when there is nothing to redo)."""
        label_id = self._history.redo()
        self._status("Nothing to redo." if label_id is None else f"redid label {label_id}")
        return label_id

    def edit_label(self, label_id: int) -> None:
        """Pick committed object ``label_id`` of the displayed slice back up for correction.

        Its mask becomes the mask prompt (low-res logits) and the preview; add clicks to
        correct it, then :meth:`accept` re-commits it under the same id.
        """
        seg = self._require_segmenter()
        target = self.target_layer
        if target is None or target not in self.viewer.layers:
            raise InvalidPromptError("There is no target Labels layer to edit yet: accept an object first.")
        key = self.current_key()
        edit = pick_up(seg, target, self.image_layer, key, label_id)
        self.clear()
        self._edit = edit
        self._show(key, edit.mask)
        self._status(f"editing label {label_id}: add clicks, then accept")

    @property
    def editing(self) -> int | None:
        """The label id being edited, or None."""
        return self._edit.label_id if self._edit is not None else None

    def close(self) -> None:
        """Disconnect from the viewer (the layers stay)."""
        viewer = self._viewer_ref()
        if viewer is not None:
            viewer.dims.events.current_step.disconnect(self._on_step)
            viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self._ahead.close()
        self._jobs.invalidate()
