"""Commits of accepted masks into Labels layers, with undo/redo of their bounding-box diffs.

Each commit is a :class:`~napari_sam.adapters.labels_io.LabelDiff` (one 2D slice, the
bounding-box crop of old and new values) paired with the layer it was written to. A new
commit clears the redo stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import labels_io


class CommitHistory:
    """Undo/redo stacks of ``(labels layer, LabelDiff)`` commits."""

    def __init__(self) -> None:
        self.undo_stack: list[tuple[Any, labels_io.LabelDiff]] = []
        self.redo_stack: list[tuple[Any, labels_io.LabelDiff]] = []

    def commit(
        self, target: Any, key: tuple[int, ...], mask: np.ndarray, edit_id: int | None = None, overwrite: bool = False
    ) -> int:
        """Write ``mask`` (H, W) bool into slice ``key`` of ``target``; returns the label id used.

        A new object (``edit_id`` None) gets an unused id (max + 1); an edited one keeps ``edit_id``
        and its pixels outside ``mask`` become background. Other labels are left untouched unless
        ``overwrite``. Nothing is written (nor recorded) when nothing changes or anything fails.
        """
        label_id = edit_id if edit_id is not None else labels_io.next_label_id(target)
        diff = labels_io.build_commit(
            target.data, key, mask, label_id, overwrite=overwrite, replace_id=edit_id is not None
        )
        if diff is not None:
            labels_io.apply_diff(target, diff)
            self.undo_stack.append((target, diff))
            self.redo_stack.clear()
        return label_id

    def undo(self) -> int | None:
        """Revert the last commit; returns its label id (None when there is nothing to undo)."""
        if not self.undo_stack:
            return None
        layer, diff = self.undo_stack.pop()
        labels_io.apply_diff(layer, diff, undo=True)
        self.redo_stack.append((layer, diff))
        return diff.label_id

    def redo(self) -> int | None:
        """Re-apply the last undone commit; returns its label id (None when there is nothing to redo)."""
        if not self.redo_stack:
            return None
        layer, diff = self.redo_stack.pop()
        labels_io.apply_diff(layer, diff)
        self.undo_stack.append((layer, diff))
        return diff.label_id
