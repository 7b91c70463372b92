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

The prompt layers, clicks, boxes and the click-ahead decode live in :mod:`.prompt_input`, the
preview and its candidates in :mod:`.preview`, the channel-layers list in :mod:`.channel_layers`
(the three are parts of :class:`SamController`, whose state they share), the embedding bookkeeping
in :mod:`.embedding_jobs`, the commit undo/redo stacks in :mod:`.commit_history`, picking a
committed label back up in :mod:`.label_edit`, the Labels layers napari-sam adds in
:mod:`.own_layers`; the controller holds the state, the model and image setup and the viewer's
events, and coordinates them.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from ..engine.progress import Progress, run_blocking
from ..errors import ImageNotSetError, InvalidPromptError, NapariSamError
from . import layer_data, own_layers, prompt_layers
from .channel_layers import ChannelLayers
from .click_ahead import ClickAhead
from .commit_history import CommitHistory
from .embedding_jobs import EmbeddingJobs, EmbeddingResult
from .label_edit import LabelEdit, pick_up
from .preview import PreviewHandling
from .prompt_input import PromptInput

__all__ = ["SamController", "EmbeddingResult"]


class SamController(PromptInput, PreviewHandling, ChannelLayers):
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

    # ---- own layers ------------------------------------------------------------------------------
    def _remove_own_layers(self) -> None:
        # one at a time: removing a layer runs viewer callbacks that may read the others
        for attr in ("points_layer", "boxes_layer", "preview_layer"):
            layer = getattr(self, attr)
            setattr(self, attr, None)
            own_layers.remove_layers(self._viewer_ref(), [layer])
        self._preview_key = self._preview_box = None

    # ---- events ----------------------------------------------------------------------------------
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
