"""Typed exceptions of napari-sam.

Every error a user can cause (bad image, bad prompt, bad checkpoint, missing
download) is raised as one of these, with a message that names the problem
and, where possible, what to do about it.
"""

from __future__ import annotations


class NapariSamError(Exception):
    """Base class of all napari-sam errors."""


class InvalidImageError(NapariSamError, ValueError):
    """The image has the wrong dimensions, dtype, or contains NaN/inf."""


class InvalidPromptError(NapariSamError, ValueError):
    """Points, labels, boxes or mask inputs are malformed or out of range."""


class ImageNotSetError(NapariSamError, RuntimeError):
    """A prediction was requested before an image (or embedding) was set."""


class CheckpointError(NapariSamError, ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or of another model type."""


class UnknownModelError(NapariSamError, KeyError):
    """A model name that is neither in the zoo nor a path to a file."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DownloadError(NapariSamError, OSError):
    """Model weights could not be fetched (no network, bad hash, ...)."""


class DeviceError(NapariSamError, ValueError):
    """An unknown or unavailable compute device, or an unknown precision, was requested."""


class CacheError(NapariSamError, OSError):
    """The embedding cache cannot be read or written."""


class TrainingError(NapariSamError, ValueError):
    """Training data or settings are unusable (no objects, mismatched shapes, output exists, ...)."""


class OutputExistsError(NapariSamError, FileExistsError):
    """An output path already holds data that a run would overwrite (pass overwrite=True / --overwrite)."""


class BatchWriteError(NapariSamError, OSError):
    """Writing a batch result failed part-way; ``done_slices`` lists the slices that are intact."""

    def __init__(self, message: str, done_slices: list[int] | tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.done_slices = list(done_slices)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(NapariSamError, ValueError):
    """A setting has an invalid value or combination (e.g. automatic segmentation options)."""


class ConcurrentUseError(NapariSamError, RuntimeError):
    """A shared Segmenter's image was replaced by another thread between a thread's calls."""


class InvalidOutputError(NapariSamError, ValueError):
    """An output path that cannot be used: it is or overlaps the input, its folder is missing,
    or its suffix names a format napari-sam does not write."""


class NoDecoderError(NapariSamError, ValueError):
    """Automatic segmentation with an instance decoder was asked of a model that has none."""


class InvalidSequenceError(InvalidImageError):
    """A frame sequence (time-lapse or z-stack) is unusable: one frame, frames of different shapes, no frames."""


class TrackingError(NapariSamError, RuntimeError):
    """A tracking request cannot be served as asked (e.g. propagation before any object has a prompt)."""


class SequencesFailedError(NapariSamError, RuntimeError):
    """Some sequences of a multi-sequence run failed; the others finished.

    ``failed`` maps each failed sequence's name to its error message; ``finished`` holds the
    results of the sequences that finished (their outputs are complete and kept).
    """

    def __init__(self, message: str, failed: dict[str, str] | None = None, finished: list | None = None) -> None:
        super().__init__(message)
        self.failed = dict(failed or {})
        self.finished = list(finished or [])

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
