"""``ModelPicker``: the model choice shared by every dock widget (a zoo name or a checkpoint file).

It builds the two controls a widget shows (a "model" list of zoo names plus "from file...", and
a file field shown only for "from file...", offering only the files the loader reads: ``torch.save``
checkpoints, ``*.pt`` / ``*.pth``) and turns them into what ``load_model`` takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit

from ..errors import NapariSamError

FROM_FILE = "from file..."
#: checkpoint files the loader reads (``torch.load(weights_only=True)``).
CHECKPOINT_FILTER = "*.pt *.pth"


class ModelPicker:
    """The "model" list and its "model file" field.

    Args:
        label: the list's label (e.g. ``"model"``, ``"start from"``).
        extra: optional ``() -> list[str]`` of names offered before the zoo's (e.g. the main
            widget's loaded model).
        from_file: whether "from file..." is offered.
        families: zoo families offered (``("sam", "sam2")`` adds the SAM 2.1 models).
    """

    def __init__(self, label: str = "model", extra: Callable[[], list[str]] | None = None, from_file: bool = True,
                 families: tuple[str, ...] = ("sam",)):
        self._extra = extra
        self._families = families
        self._from_file = from_file
        self.combo = ComboBox(label=label, choices=self.choices)
        self.file = FileEdit(label="model file", mode="r", filter=CHECKPOINT_FILTER, visible=False)
        self.combo.changed.connect(lambda v: setattr(self.file, "visible", v == FROM_FILE))
        self._label = label

    def choices(self, _widget=None) -> list[str]:
        from ..engine.models.zoo import list_models

        names = [e.name for e in list_models(families=self._families)]
        extra = [n for n in (self._extra() if self._extra else []) if n not in names]
        return extra + names + ([FROM_FILE] if self._from_file else [])

    @property
    def controls(self) -> list:
        return [self.combo, self.file] if self._from_file else [self.combo]

    def spec(self) -> str:
        """The chosen zoo name or checkpoint path; raises :class:`NapariSamError` for "from file..."
        without an existing file."""
        if self.combo.value == FROM_FILE:
            path = str(self.file.value or "").strip()
            if not path or path == "." or not Path(path).is_file():
                raise NapariSamError(f"Choose a checkpoint file for '{self._label}: {FROM_FILE}'.")
            return path
        return self.combo.value

    def select_default(self, preferred: str | None = None) -> None:
        """Select ``preferred`` if offered, else the default model
        (:func:`~napari_sam.engine.models.zoo.default_model_name`: ``$NAPARI_SAM_MODEL``, a
        light-microscopy model already downloaded with its decoder, else the bundled ``tiny``), else
        leave the first entry."""
        from ..engine.models.zoo import default_model_name

        try:
            name = preferred or default_model_name()
        except NapariSamError:  # no bundled model: leave the first entry
            return
        if name in self.combo.choices:
            self.combo.value = name
