"""The controller's preview: decoding the displayed slice's prompts, the preview Labels layer,
the candidate masks (cycling through them) and the console's one-call :meth:`PreviewHandling.segment`.

:class:`PreviewHandling` is a part of :class:`~napari_sam.adapters.controller.SamController` (which
holds the state it reads: ``preview_layer``, ``_preview_key``, ``_preview_box``, ``prediction``,
``candidate``, ``_pred_key``, ``_edit``, ``_jobs``, ``_ahead``, ``_lock``); writing a mask into the
preview layer lives in :mod:`.labels_io`, adding the layer in :mod:`.own_layers`.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import InvalidPromptError, NapariSamError
from . import labels_io, layer_data, own_layers
from .label_edit import predict_prompts

__all__ = ["PreviewHandling"]


class PreviewHandling:
    """Preview, prediction and candidates of :class:`~napari_sam.adapters.controller.SamController`."""

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

