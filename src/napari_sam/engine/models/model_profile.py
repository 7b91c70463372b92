"""What automatic segmentation needs to know about a model before running it: decoder or not, its defaults.

Answers from the zoo's records (nothing is downloaded) or, for a local checkpoint, from the
file itself (weights only). The values come from :mod:`.auto_defaults`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .auto_defaults import TINY_NOTE
from .zoo import default_model_name, find_entry


@dataclass(frozen=True)
class ModelProfile:
    """What automatic segmentation needs to know about a model before loading it.

    Attributes:
        name: the zoo name or the checkpoint path as given.
        has_decoder: whether loading it brings a trained instance decoder.
        defaults: its own threshold values, by :class:`AutoSettings` field name.
    """

    name: str
    has_decoder: bool
    defaults: tuple[tuple[str, float], ...] = ()

    def resolve(self, settings):
        """``settings`` resolved for this model (:meth:`AutoSettings.resolved`)."""
        return settings.resolved(self.has_decoder, dict(self.defaults), self.name)


def _file_has_decoder(path: Path) -> bool:
    from ...model.checkpoint import load_weights_only
    from ...model.instance_decoder import embedded_decoder_state

    return embedded_decoder_state(load_weights_only(path)) is not None


def profile(name_or_path: str | os.PathLike | None) -> ModelProfile:
    """The :class:`ModelProfile` of a zoo name or checkpoint file (None: the default model).

    A zoo entry answers from its record (nothing is downloaded); a local file is read
    (weights only) to see whether it carries a decoder.
    """
    if name_or_path is None:
        name_or_path = default_model_name()
    entry = find_entry(name_or_path) if isinstance(name_or_path, str) else None
    if entry is not None:
        return ModelProfile(entry.name, entry.decoder is not None or entry.bundled_decoder, entry.automatic)
    return ModelProfile(str(name_or_path), _file_has_decoder(Path(name_or_path).expanduser()))


def model_profile(model, name: str | None) -> ModelProfile:
    """The profile of a model already loaded (its decoder as attached) under zoo name or path ``name``."""
    entry = find_entry(name) if isinstance(name, str) else None
    return ModelProfile(name or getattr(model, "model_type", "this model"),
                        getattr(model, "instance_decoder", None) is not None,
                        entry.automatic if entry is not None else ())


def tiny_note(name_or_path: str | os.PathLike | None) -> str | None:
    """:data:`TINY_NOTE` when ``name_or_path`` (None: the default model) is the bundled model, else None."""
    try:
        name = name_or_path if name_or_path is not None else default_model_name()
    except Exception:  # no default model at all: the run itself says so
        return None
    entry = find_entry(name) if isinstance(name, str) else None
    return TINY_NOTE if entry is not None and entry.bundled and entry.name == "tiny" else None


__all__ = ["ModelProfile", "model_profile", "profile", "tiny_note"]
